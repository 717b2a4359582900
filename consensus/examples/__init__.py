"""Example applications of the consensus runner (`python -m consensus.examples.kv`)."""
