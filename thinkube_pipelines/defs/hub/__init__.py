"""The hub_deploy job: preflight, SeaweedFS volumes, chart values and the JupyterHub release."""
