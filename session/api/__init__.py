"""The session service on the network: gRPC `session.SessionService` on a `SessionManager`.

`session.proto` is the source of truth; `session_pb2*.py` are generated from it by
`python -m session.api.generate` (committed; a test fails while they are stale). Import from
the modules (nothing is imported here, so that the generator runs even while the generated
modules are missing or out of date):

- `endpoint.ApiServer`: the grpc.aio server (the service, grpc.health.v1, reflection; TLS rule)
- `service.SessionService`: the servicer and its limits (`ApiConfig`)
- `auth`: the bearer-token guard and request counts
- `health.StoreHealth`: store reachability, for gRPC health and HTTP /readyz
- `convert`: model <-> protobuf

Like the rest of `session`, it knows nothing of UDP. docs/API.md has the semantics.
"""
