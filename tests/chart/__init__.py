"""Chart tier: the Helm chart rendered offline with Helm's Go SDK (`helm-python-sdk`, no helm binary,
no cluster) for the value sets in `scenarios/`, every manifest validated against the Kubernetes schemas
(`kubernetes-validate`). Needs nothing running. Run: `.venv/bin/python -m pytest tests/chart` (or `-m chart`)."""
