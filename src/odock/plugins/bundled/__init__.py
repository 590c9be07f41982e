"""The plugins shipped with the gateway (reference §8.5): audit_log, pii_mask, request_transform, webhook."""
