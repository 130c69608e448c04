from tradelib.cli import main

raise SystemExit(main())
