"""befa: pipeline."""
