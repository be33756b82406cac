"""Worker processes: one gateway over several cores (docs/WORKERS.md).

    role.py         which worker a process is; its client id, filters, outbox directory
    route_sync.py   the leader's routing changes, served by every worker before answered
    supervisor.py   `edge-runtime run` with [workers] count > 1: start, restart, retire, stop
"""
