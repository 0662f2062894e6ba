"""Bucket-to-bucket units of work, one module per flow.

Each function reads its inputs from the bucket (through the local cache),
runs library routines, writes its outputs atomically back to the bucket and
returns a small JSON-ready summary: exactly what a Metaflow step keeps as an
artifact. Nothing here reads the environment; flows pass settings in.
"""
