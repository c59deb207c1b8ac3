"""Authorization policy: validation, compilation to Envoy RBAC, check/explain, matrix.

Pure: no I/O, no clock. Entry points:
- `compile.http_rbac_filters(world, service)` / `compile.network_rbac_filters(world, service)`
- `compile.reachable_services(world, service)` (outbound scoping)
- `compile.rule_sources(world, service)` (NACK tracing: `policy:<id>`)
- `hardening.hcm_path_hardening()` (HCM fields every generated HCM must carry)
- `check.check(world, caller, target, method, path, headers, grpc_method)`
- `validate.policy_violations(policy, world)` / `validate.check_policy(...)`
"""
