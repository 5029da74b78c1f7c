from fraud.cli import main

main()
