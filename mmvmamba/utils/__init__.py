"""Helpers shared by the analysis tools: FLOP counting, building models from configs, checkpoint conversion."""
