"""The response cache (issue 14): exact replay of complete answers, in any dialect, keyed per tenant.

`key` builds the entry's key, `replay` turns answers into normalized events and back, `store` keeps entries
(memory or Redis) and coalesces identical misses. The pipeline stage that uses them is
`odock.pipeline.stages.cache.ResponseCache`; the policy section is `odock.state.cache_policy`.
"""
