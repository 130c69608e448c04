from tradelib.cli import run

run()
