"""Kubernetes manifests for the cluster environment, as pure functions of typed specs.

`build_job.build_job_manifest` is the batch/v1 Job that builds one image with BuildKit rootless;
`run_job.run_job_manifest` is the Job that runs a command (smoke check, GPU test) in a pushed digest.
Nothing here talks to an API server: the Kubernetes builder and runner create these objects, watch them and
stream their logs.
"""
