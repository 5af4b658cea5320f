"""End-to-end pipelines that chain the stages (driver code)."""
