"""Apps that show the toolkit on the seed scenario.

Load one with ``--app examples.<module>:build``.
"""
