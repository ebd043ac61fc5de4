"""Provider adapters. See `providers.base` for the contract and `providers.registry`."""
