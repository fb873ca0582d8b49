"""Alembic environment shipped inside the package; the engine comes from the caller."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from toolkit.store.engine import VERSION_TABLE
from toolkit.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` command line: sqlalchemy.url from alembic.ini
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///toolkit.db")


def _ours(name: str | None, type_: str, _parent: object) -> bool:
    """Only toolkit tables: the host application's own tables share the database."""
    if type_ == "table":
        return bool(name) and name != VERSION_TABLE and str(name).startswith("toolkit_")
    return True


with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
