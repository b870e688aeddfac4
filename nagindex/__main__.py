from nagindex.cli import main

main()
