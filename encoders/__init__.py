"""befa: encoders."""
