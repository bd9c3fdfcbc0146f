"""Usage reports: GPU-hours and cost by team, user, profile, GPU type and day, read from the
billing ledger (the service's API and pages, and `gpuhub report`)."""
