"""The layer below every stage: data contracts, result types, errors, file and database helpers.

``geo``, ``classify`` and ``warehouse`` import this package and nothing of each other; ``flows``
wires them. Nothing here imports torch, Prefect or any stage package.

Modules: ``tables`` (Arrow schemas of the tables passed between stages, and ``sql/schema.sql``,
the DuckDB DDL tested against them), ``results`` (what one stage hands the next), ``errors``
(``CityAuditError``, the root of every error a user can cause or fix), ``files`` (atomic
writes), ``spatial`` (DuckDB with the offline spatial extension), ``registry`` (named
registries for sources, backbones and heads) and ``notices`` (texts every output shares, such
as the untrained-model warning).
"""
