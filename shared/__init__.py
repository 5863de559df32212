"""The product's platform and domain library, shared by every deployed function."""
