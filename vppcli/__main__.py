from vppcli.cli import app

app(prog_name="vpp")
