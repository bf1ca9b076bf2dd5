"""befa: models."""
