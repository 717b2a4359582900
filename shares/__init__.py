"""shares package."""
