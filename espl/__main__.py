from espl.cli import main

main()
