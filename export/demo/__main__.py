from export.demo.run import main

main()
