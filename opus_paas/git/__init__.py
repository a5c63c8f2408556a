"""Git over SSH: dulwich's protocol, C git's packs, the hooks after a push."""
