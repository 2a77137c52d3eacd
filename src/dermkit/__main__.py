from dermkit.cli import main

main()
