from ultraplane.cli.main import main

raise SystemExit(main())
