"""The billing ledger: the platform's own database of server runs (usage sessions), admission
against team quotas and budgets, and reconciliation with what really runs."""
