from cpmai.cli.main import run

run()
