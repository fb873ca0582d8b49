"""The store: engine and sessions, models, migrations, and every statement that writes state.

Nothing outside this package writes to a ``toolkit_*`` table or asks which database it is on.
"""
