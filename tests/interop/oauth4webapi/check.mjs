// An OAuth client nobody here wrote (panva's oauth4webapi, pinned in package.json) against a running authority.
//
//   node check.mjs <issuer> <impersonation token>
//   (or AUTHORITY_ISSUER and AUTHORITY_IMPERSONATION_TOKEN in the environment)
//
// Only oauth4webapi's public API speaks OAuth here:
// 1. RFC 8414 discovery at <issuer>/.well-known/oauth-authorization-server (discoveryRequest with the `oauth2`
//    algorithm + processDiscoveryResponse: the document's issuer must be exactly the one asked for);
// 2. RFC 8693 token exchange of the impersonation token (genericTokenEndpointRequest, no client authentication:
//    None()) with a DPoP proof (RFC 9449) from an ES256 key made here, retried once on `use_dpop_nonce` as
//    oauth4webapi documents it (isDPoPNonceError), the answer read by processGenericTokenEndpointResponse;
// 3. the access token checked as a resource server using oauth4webapi would (validateJwtAccessToken: RFC 9068
//    claims, signature against the discovered jwks_uri, and the DPoP binding: cnf.jkt against the proof's key);
// 4. the same token redeemed again, same client and key: it must be refused with `invalid_grant`.
//
// Prints one JSON document on stdout. Exits 0 only if every step went as expected; 1 if the server answered
// something unexpected (the JSON says what, under "problems"); 2 if a step threw (stderr says which and why).

import * as oauth from 'oauth4webapi'

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt'
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token'
const AUDIENCE = process.env.AUTHORITY_SESSION_AUDIENCE ?? 'portal-api'

const issuerArg = process.argv[2] ?? process.env.AUTHORITY_ISSUER
const subjectToken = process.argv[3] ?? process.env.AUTHORITY_IMPERSONATION_TOKEN
if (!issuerArg || !subjectToken) {
  console.error('usage: node check.mjs <issuer> <impersonation token>')
  process.exit(64)
}
const issuer = new URL(issuerArg)

// oauth4webapi speaks HTTPS only unless told otherwise; plain HTTP is allowed here for a loopback issuer only
// (the suite's `authority serve --demo`), never for a remote one.
const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(issuer.hostname)
const http = { [oauth.allowInsecureRequests]: issuer.protocol === 'http:' && loopback }

let step = 'discovery'
try {
  const as = await oauth
    .discoveryRequest(issuer, { ...http, algorithm: 'oauth2' })
    .then((response) => oauth.processDiscoveryResponse(issuer, response))

  step = 'key pair'
  const client = { client_id: 'oauth4webapi-interop' }
  const keyPair = await oauth.generateKeyPair('ES256')
  const DPoP = oauth.DPoP(client, keyPair)
  const thumbprint = await DPoP.calculateThumbprint()

  // The token exchange, retried once with the server's nonce, as oauth4webapi's DPoP documentation does it.
  async function exchange() {
    const params = new URLSearchParams({ subject_token: subjectToken, subject_token_type: JWT_TOKEN_TYPE })
    let nonceRetries = 0
    for (;;) {
      const response = await oauth.genericTokenEndpointRequest(as, client, oauth.None(), TOKEN_EXCHANGE, params, {
        ...http,
        DPoP,
      })
      const wire = await response.clone().json().catch(() => null) // what was sent, before oauth4webapi normalizes it
      try {
        const result = await oauth.processGenericTokenEndpointResponse(as, client, response)
        return { result, wire, nonceRetries }
      } catch (err) {
        if (oauth.isDPoPNonceError(err) && nonceRetries === 0) {
          nonceRetries += 1
          continue
        }
        err.nonceRetries = nonceRetries
        throw err
      }
    }
  }

  step = 'token exchange'
  const { result, wire, nonceRetries } = await exchange()

  // A resource server's view: a request carrying the token and a fresh proof for it, made by oauth4webapi's
  // protectedResourceRequest and captured (not sent) through its customFetch hook, then validated.
  step = 'access token validation'
  const resource = new URL('/api/sys/sessions/current', issuer)
  let captured
  await oauth.protectedResourceRequest(result.access_token, 'GET', resource, new Headers(), null, {
    ...http,
    DPoP,
    [oauth.customFetch]: async (url, options) => {
      captured = new Request(url, { method: options.method, headers: options.headers })
      return new Response(null, { status: 204 })
    },
  })
  const claims = await oauth.validateJwtAccessToken(as, captured, AUDIENCE, { ...http, requireDPoP: true })

  step = 'replay'
  let replay
  try {
    const again = await exchange()
    replay = { refused: false, token_type: again.result.token_type }
  } catch (err) {
    if (!(err instanceof oauth.ResponseBodyError)) throw err
    replay = {
      refused: true,
      class: err.constructor.name,
      status: err.status,
      error: err.error,
      error_description: err.error_description,
      nonce_retries: err.nonceRetries,
    }
  }

  const report = {
    client: 'oauth4webapi',
    issuer: as.issuer,
    token_endpoint: as.token_endpoint,
    dpop_signing_alg_values_supported: as.dpop_signing_alg_values_supported,
    exchange: {
      token_type: result.token_type,
      token_type_on_the_wire: wire?.token_type,
      issued_token_type: result.issued_token_type,
      expires_in: result.expires_in,
      refresh_token: result.refresh_token ?? null,
      session_id: result.session_id,
      nonce_retries: nonceRetries,
    },
    access_token: {
      validated_by: 'validateJwtAccessToken (RFC 9068 + RFC 9449, signature from jwks_uri)',
      sub: claims.sub,
      act: claims.act,
      aud: claims.aud,
      client_id: claims.client_id,
      cnf_jkt: claims.cnf?.jkt,
      key_thumbprint: thumbprint,
      bound_to_the_key: claims.cnf?.jkt === thumbprint,
    },
    replay,
  }

  const problems = []
  const expect = (ok, what) => ok || problems.push(what)
  expect(result.token_type === 'dpop', `token_type ${result.token_type}, not DPoP`)
  expect(result.issued_token_type === ACCESS_TOKEN_TYPE, `issued_token_type ${result.issued_token_type}`)
  expect(Number.isInteger(result.expires_in) && result.expires_in > 0, `expires_in ${result.expires_in}`)
  expect(result.refresh_token === undefined, 'a refresh token was issued')
  expect(report.access_token.bound_to_the_key, `cnf.jkt ${claims.cnf?.jkt} is not the key's ${thumbprint}`)
  expect(replay.refused && replay.error === 'invalid_grant', `the replay: ${JSON.stringify(replay)}`)
  if (problems.length) report.problems = problems

  console.log(JSON.stringify(report, null, 2))
  process.exit(problems.length ? 1 : 0)
} catch (err) {
  const detail = { step, name: err?.constructor?.name, code: err?.code, message: err?.message }
  if (err instanceof oauth.ResponseBodyError) Object.assign(detail, { status: err.status, body: err.cause })
  else if (err?.cause !== undefined) detail.cause = err.cause
  console.error(`oauth4webapi check failed at ${step}: ${JSON.stringify(detail, null, 2)}`)
  process.exit(2)
}
