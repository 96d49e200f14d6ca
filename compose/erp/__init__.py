"""The example ERP service: FastAPI modules behind one twotier cache (docs/erp-example.md)."""
