"""The round loop and what it needs: site sampling and update validation."""
