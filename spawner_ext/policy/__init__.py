"""Pure decisions shared by the Kubernetes and local spawners: who is in which team, which profiles
they see, and what a spawn request resolves to. No I/O here."""
