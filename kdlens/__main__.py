from kdlens.cli import main

main()
