"""The hub_deploy side of the project: JupyterHub (zero-to-jupyterhub chart 4.4.0) with Keycloak login,
SeaweedFS storage and the catalog's images offered at spawn time.

- `settings`: every setting of the hub, read from the environment (`HubSettings.from_env()`);
- `values`: typed models of the chart values we set, rendered to a dict and checked against the chart's
  values schema;
- `render`: the whole release (values + the manifests applied beside the chart), validated, written to a
  folder (`thinkube-pipelines hub render --out DIR`);
- `profiles`: the profile_list callable that runs inside the hub;
- `volumes`, `preflight`, `release`: the SeaweedFS volumes, the dependency checks, the helm release.
"""
