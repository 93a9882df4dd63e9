// node oidc-provider as a client-credentials token service: EdDSA-signed JWT access tokens, in-memory adapter,
// nothing else enabled. Usage: node server.mjs PORT
import { generateKeyPairSync } from "node:crypto";
import Provider from "oidc-provider";

const port = Number(process.argv[2] ?? 3000);
const { privateKey } = generateKeyPairSync("ed25519");
const jwk = { ...privateKey.export({ format: "jwk" }), alg: "EdDSA", use: "sig", kid: "bench" };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  jwks: { keys: [jwk] },
  clients: [
    {
      client_id: "bench",
      client_secret: "bench-secret",
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: "client_secret_basic",
      id_token_signed_response_alg: "EdDSA",
    },
  ],
  ttl: { ClientCredentials: 900 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => "urn:portal-api",
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: "api",
        audience: "urn:portal-api",
        accessTokenTTL: 900,
        accessTokenFormat: "jwt",
        jwt: { sign: { alg: "EdDSA" } },
      }),
    },
  },
});
provider.listen(port, "127.0.0.1", () => console.log(`oidc-provider listening on ${port}`));
