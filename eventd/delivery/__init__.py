"""Delivery of accepted actions: per-target lanes, attempts, retries, breaker, limits, HTTP.

Takes jobs the engine accepted into the spool and runs them until delivered or dead-lettered:

    dispatcher  admission, one worker per lane, outcomes (done, dead letter, follow-up)
    lanes       a target's bounded window of jobs; the rest is paged in from the spool
    attempts    one attempt of one job, and its verdict
    retry       the policy: probe waits, "come back at T" waits, the deadline
    breaker     per-target health: failing since when, open after 30 s, closed by a success
    limits      at most N REST calls per target object per window
    http        sessions, status classification, redirects refused, error reasons

Imports `actions`, `stores`, `ops`, `events`, `errors`; never `sources`, `ruleset`, `engine`,
`commands` or `emulator`.
"""
