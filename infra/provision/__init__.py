"""Provision Content Processor on Fly.io, idempotently: `python -m infra.provision [--dry-run]`.

See plan.py for the steps and docs/deploy.md for the whole path.
"""
