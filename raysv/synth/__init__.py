"""A speaker corpus generator: source-filter speech with stable speaker identity."""
