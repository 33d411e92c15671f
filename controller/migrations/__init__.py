"""Alembic migrations, packaged so an installed controller can migrate its own database."""
