from egoscale.cli import main

raise SystemExit(main())
