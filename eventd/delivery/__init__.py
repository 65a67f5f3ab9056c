"""Delivery of accepted actions: per-target lanes, attempts, retries, breaker.

Takes jobs the engine accepted into the spool and runs them until delivered or dead-lettered:

    dispatcher  admission, one worker per lane, outcomes (done, dead letter, follow-up)
    lanes       a target's bounded window of jobs; the rest is paged in from the spool
    attempts    one attempt of one job (the gate, prepare, the gate, send), and its verdict
    gate        the one gate every request passes: the job's MAC, the loaded rules, the policy
    policies    what the gate admits (http, dockercloud, docker, local), from configuration
    signing     job MACs and where their key comes from
    retry       the policy: probe waits, "come back at T" waits, the deadline
    breaker     per-target health: failing since when, open after 30 s, closed by a success

Imports `actions`, `clients`, `guards`, `stores`, `ops`, `records`, `events`, `errors`; never
`sources`, `ruleset`, `engine`, `commands` or `emulator`.
"""
