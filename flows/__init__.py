"""befa: flows."""
