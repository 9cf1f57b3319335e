from vppcli.cli import main

main()
