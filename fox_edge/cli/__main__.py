from fox_edge.cli import main

main()
