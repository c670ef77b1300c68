"""Who may do what: scoped API tokens and the receipts that tie feedback to an answer given."""
