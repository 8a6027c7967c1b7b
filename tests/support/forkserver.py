"""The one multiprocessing context the tests' worker processes start from.

A forkserver, started once with Oríon's client and orion_sql imported, forks each
worker in milliseconds instead of paying their imports (seconds) every time, and
never forks the pytest process itself (its threads and open connections). Its
preload list is set here only: the forkserver is one per session, so a second
module setting its own list would silently replace the first one's. The list holds
what the workers import: test_concurrency (the workers' entry point, and pytest),
both drivers, and skopt (Oríon's algorithm plugins load it in create_experiment).
"""
import multiprocessing

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["orion.client", "orion_sql", "test_concurrency", "psycopg", "pymysql", "skopt"])
