// node oidc-provider as a client-credentials token service: EdDSA-signed JWT access tokens, in-memory adapter,
// nothing else enabled. Usage: node server.mjs PORT [PROCESSES]
// With PROCESSES > 1, node's cluster module forks that many processes sharing the port (as granian's workers do),
// all signing with one key made by the primary.
import cluster from "node:cluster";
import { generateKeyPairSync } from "node:crypto";
import Provider from "oidc-provider";

const port = Number(process.argv[2] ?? 3000);
const processes = Number(process.argv[3] ?? 1);

function serve(jwk) {
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
  provider.listen(port, "127.0.0.1", () => console.log(`oidc-provider ${process.pid} listening on ${port}`));
}

if (processes > 1 && cluster.isPrimary) {
  const { privateKey } = generateKeyPairSync("ed25519");
  const jwk = JSON.stringify({ ...privateKey.export({ format: "jwk" }), alg: "EdDSA", use: "sig", kid: "bench" });
  for (let i = 0; i < processes; i++) cluster.fork({ BENCH_PEER_JWK: jwk });
  const stop = () => { for (const worker of Object.values(cluster.workers)) worker.kill(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else if (process.env.BENCH_PEER_JWK) {
  serve(JSON.parse(process.env.BENCH_PEER_JWK));
} else {
  const { privateKey } = generateKeyPairSync("ed25519");
  serve({ ...privateKey.export({ format: "jwk" }), alg: "EdDSA", use: "sig", kid: "bench" });
}
