"""Writes data/captions.txt: the prompt corpus for the text-encoder covariance C (spec section 5).

C is the second moment of the text encoder's per-token outputs; the gate measures every prompt token
against it, so the corpus should look like what people type into Stable Diffusion, not only like
photo captions. The prompts are generated here from hand-written vocabularies (the file is this
project's own work under its licence, no scraped text), deterministically: the same seed and count
give the same file. The vocabularies cover subjects (people, animals, objects, food, vehicles,
architecture, plants, fantasy and sci-fi), places, weather and time, styles and media (photography
and camera terms, art movements, illustration, anime, 3d), lighting, colour, composition, quality
tags and negative-prompt lists. The prompt shapes are mixed:

    caption    "a close-up photo of a sleepy corgi on a rooftop at dusk"
    sentence   "An oil painting of an old lighthouse keeper. Warm lantern light falls on ..."
    tags       "masterpiece, best quality, a knight in plate armor, castle ruins, (fog:1.2), 8k"
    booru      "1girl, solo, long hair, silver hair, blue eyes, school uniform, looking at viewer"
    negative   "(worst quality, low quality:1.4), lowres, bad anatomy, extra fingers, watermark"
    long       a tag list and a description together, 80-200 CLIP tokens (two or three 77-token chunks)

with ComfyUI prompt weights like ``(red hat:1.2)``, ``((masterpiece))`` and ``(fog)``, and booru tags
with and without underscores. About a quarter of the prompts run past one 77-token chunk, so every
position 0..76 of a chunk holds a real token in part of the corpus.

    python scripts/make_captions.py [--count 12000] [--seed 0] [--out data/captions.txt]
"""

from __future__ import annotations

import argparse
import os
import random


def W(text: str) -> list:
    """Whitespace-separated single words."""
    return text.split()


def P(text: str) -> list:
    """Comma- or newline-separated phrases."""
    return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]


# ----------------------------------------------------------------------------------------------
# Subjects
# ----------------------------------------------------------------------------------------------

PERSON_BASE = P("""woman, man, girl, boy, child, kid, toddler, baby, teenager, teenage girl, teenage boy,
young woman, young man, old woman, old man, elderly woman, elderly man, middle-aged woman, middle-aged man,
lady, gentleman, person, couple, family, mother, father, grandmother, grandfather, daughter, son, sisters,
brothers, twins, friends, bride, groom, crowd of people, group of students, grandma, grandpa, toddler girl""")

PROFESSIONS = P("""chef, baker, barista, waiter, waitress, bartender, butcher, farmer, gardener, fisherman,
lumberjack, carpenter, blacksmith, mechanic, plumber, electrician, construction worker, miner, welder,
doctor, nurse, surgeon, dentist, scientist, chemist, astronaut, pilot, flight attendant, sailor, captain,
soldier, general, police officer, detective, firefighter, paramedic, lifeguard, teacher, professor, student,
librarian, writer, poet, journalist, photographer, painter, sculptor, potter, tailor, seamstress, designer,
architect, engineer, programmer, hacker, gamer, streamer, youtuber, influencer, model, fashion model, actor,
actress, singer, rapper, guitarist, drummer, pianist, violinist, cellist, saxophonist, dj, conductor,
dancer, ballerina, breakdancer, gymnast, boxer, wrestler, sumo wrestler, martial artist, karate master,
runner, sprinter, cyclist, swimmer, diver, surfer, skateboarder, snowboarder, skier, climber, hiker,
mountaineer, tennis player, football player, soccer player, basketball player, baseball player, golfer,
jockey, cowboy, cowgirl, rancher, shepherd, beekeeper, florist, shopkeeper, merchant, street vendor,
businessman, businesswoman, ceo, office worker, secretary, lawyer, judge, politician, king, queen, prince,
princess, emperor, empress, pharaoh, knight, squire, samurai, ninja, geisha, monk, nun, priest, priestess,
shaman, druid, explorer, archaeologist, adventurer, traveler, tourist, backpacker, hitchhiker, pirate,
viking, gladiator, spartan warrior, roman centurion, musketeer, highwayman, nomad, beggar, street urchin,
clown, jester, magician, acrobat, juggler, ringmaster, mime, puppeteer, stuntman, race car driver,
motorcyclist, biker, truck driver, taxi driver, train conductor, mailman, delivery guy, courier, janitor,
maid, butler, nanny, housewife, cheerleader, idol, schoolgirl, schoolboy, office lady, nerd, punk, goth girl,
hipster, skater girl, biker girl, cyberpunk girl, pin-up girl, flapper, mobster, gangster, spy, secret agent,
assassin, bounty hunter, mercenary, sniper, marine, ranger, archer, hunter, trapper, tribal chief,
warrior, warrior princess, barbarian, paladin, cleric, rogue, thief, bard, alchemist, inventor,
mad scientist, watchmaker, toymaker, glassblower, weaver, calligrapher, tattoo artist, hairdresser,
makeup artist, yoga instructor, personal trainer, bodybuilder, veterinarian, zookeeper, park ranger,
lighthouse keeper, innkeeper, tavern keeper, monk in robes, hermit, wanderer, pilgrim""")

FANTASY_BEINGS = P("""elf, dark elf, high elf, wood elf, dwarf, halfling, hobbit, gnome, goblin, orc, troll, ogre,
giant, cyclops, centaur, minotaur, satyr, faun, fairy, pixie, sprite, nymph, dryad, mermaid, merman, siren,
selkie, kitsune, fox spirit, oni, tengu, yokai, kappa, vampire, werewolf, zombie, ghost, ghoul, lich,
skeleton, skeleton warrior, mummy, banshee, wraith, demon, devil, succubus, angel, archangel, fallen angel,
seraph, valkyrie, goddess, god of thunder, titan, golem, stone golem, treant, ent, wizard, witch, sorcerer,
sorceress, warlock, necromancer, enchantress, mage, archmage, oracle, seer, fortune teller, dragon,
baby dragon, wyvern, drake, hydra, basilisk, phoenix, griffin, gryphon, pegasus, unicorn, chimera, manticore,
sphinx, kraken, leviathan, sea serpent, thunderbird, kirin, qilin, chinese dragon, nine-tailed fox, slime,
mimic, beholder, imp, gargoyle, harpy, lamia, naga, djinn, genie, shapeshifter, forest spirit, water spirit,
fire elemental, ice elemental, earth elemental, wind spirit, shadow creature, eldritch horror, cthulhu,
tentacle monster, kaiju, yeti, bigfoot, chupacabra, jackalope, wendigo, headless horseman, grim reaper""")

SCIFI_BEINGS = P("""robot, android, cyborg, gynoid, mech, mecha, battle mech, giant robot, humanoid robot,
robot dog, drone, nanobot, ai, hologram, alien, grey alien, alien queen, space marine, starship captain,
space pirate, bounty hunter droid, clone trooper, armored trooper, exosuit pilot, power armor soldier,
cybernetic samurai, netrunner, replicant, synthetic human, mutant, post-apocalyptic survivor, wasteland raider,
scavenger, time traveler, space explorer, cosmonaut, martian, robot butler, steam robot, clockwork automaton,
biomechanical creature, biomechanical alien, insectoid alien, crystalline being, energy being""")

ANIMALS = P("""dog, puppy, cat, kitten, horse, pony, foal, donkey, mule, cow, calf, bull, ox, yak, buffalo, bison,
sheep, lamb, ram, goat, pig, piglet, boar, chicken, hen, rooster, chick, duck, duckling, goose, swan, turkey,
pigeon, dove, crow, raven, magpie, sparrow, robin, bluebird, cardinal, blue jay, finch, canary, hummingbird,
kingfisher, woodpecker, owl, barn owl, snowy owl, eagle, bald eagle, hawk, falcon, vulture, condor, parrot,
macaw, cockatoo, toucan, flamingo, pelican, heron, crane, stork, ibis, peacock, penguin, emperor penguin,
puffin, seagull, albatross, ostrich, emu, kiwi bird, fox, red fox, arctic fox, fennec fox, wolf, grey wolf,
coyote, jackal, hyena, bear, brown bear, grizzly bear, black bear, polar bear, panda, red panda, koala,
kangaroo, wallaby, wombat, platypus, tiger, bengal tiger, white tiger, lion, lioness, lion cub, leopard,
snow leopard, jaguar, cheetah, panther, black panther, lynx, bobcat, cougar, ocelot, serval, elephant,
baby elephant, rhino, hippo, giraffe, zebra, camel, llama, alpaca, deer, fawn, stag, reindeer, moose, elk,
antelope, gazelle, monkey, baby monkey, gorilla, chimpanzee, orangutan, baboon, lemur, sloth, raccoon,
skunk, badger, otter, sea otter, beaver, porcupine, hedgehog, squirrel, chipmunk, rabbit, bunny, hare,
mouse, rat, hamster, guinea pig, ferret, mole, bat, opossum, armadillo, anteater, tapir, capybara,
meerkat, mongoose, weasel, mink, seal, sea lion, walrus, dolphin, orca, killer whale, whale, humpback whale,
blue whale, narwhal, shark, great white shark, hammerhead shark, manta ray, stingray, jellyfish, octopus,
squid, cuttlefish, crab, hermit crab, lobster, shrimp, starfish, sea urchin, seahorse, clownfish, goldfish,
koi fish, betta fish, salmon, trout, piranha, pufferfish, angelfish, turtle, sea turtle, tortoise, frog,
tree frog, toad, salamander, axolotl, newt, lizard, gecko, iguana, chameleon, komodo dragon, crocodile,
alligator, snake, python, cobra, rattlesnake, viper, butterfly, monarch butterfly, moth, luna moth, bee,
bumblebee, honeybee, wasp, hornet, ant, beetle, ladybug, dragonfly, firefly, grasshopper, cricket,
praying mantis, cicada, spider, tarantula, scorpion, snail, slug, caterpillar, worm, dinosaur,
tyrannosaurus rex, triceratops, velociraptor, stegosaurus, brontosaurus, pterodactyl, mammoth,
sabertooth tiger, dodo""")

BREEDS = P("""golden retriever, labrador, black labrador, german shepherd, border collie, corgi, shiba inu,
akita, husky, siberian husky, alaskan malamute, samoyed, poodle, toy poodle, french bulldog, english bulldog,
pug, beagle, dachshund, chihuahua, pomeranian, yorkshire terrier, jack russell terrier, bull terrier,
pit bull, rottweiler, doberman, great dane, saint bernard, bernese mountain dog, newfoundland dog,
greyhound, whippet, dalmatian, boxer dog, shih tzu, maltese, cavalier king charles spaniel, cocker spaniel,
basset hound, bloodhound, australian shepherd, sheltie, weimaraner, vizsla, chow chow, tabby cat,
orange tabby, ginger cat, black cat, white cat, calico cat, tuxedo cat, siamese cat, persian cat,
maine coon, ragdoll cat, bengal cat, sphynx cat, british shorthair, scottish fold, russian blue,
norwegian forest cat, abyssinian cat, arabian horse, clydesdale, mustang, shetland pony, thoroughbred,
highland cow, holstein cow, merino sheep, angora rabbit, lop-eared rabbit""")

OBJECTS = P("""chair, armchair, rocking chair, stool, bench, table, coffee table, desk, sofa, couch, bed, bunk bed,
hammock, wardrobe, dresser, bookshelf, cabinet, drawer, shelf, lamp, desk lamp, floor lamp, chandelier,
lantern, candle, candlestick, oil lamp, clock, alarm clock, grandfather clock, pocket watch, wristwatch,
hourglass, mirror, vase, flower pot, teapot, kettle, cup, teacup, mug, glass, wine glass, bottle,
wine bottle, jar, mason jar, bowl, plate, fork, knife, spoon, chopsticks, frying pan, saucepan, cauldron,
cutting board, toaster, blender, microwave, refrigerator, stove, oven, sink, bathtub, towel, pillow,
cushion, blanket, quilt, rug, carpet, curtain, window, door, gate, fence, ladder, staircase, umbrella,
parasol, backpack, suitcase, briefcase, handbag, purse, wallet, basket, picnic basket, box, gift box,
treasure chest, crate, barrel, bucket, watering can, shovel, rake, axe, hammer, saw, wrench, screwdriver,
toolbox, rope, chain, padlock, key, book, old book, notebook, diary, journal, map, scroll, letter,
envelope, newspaper, magazine, postcard, photograph, picture frame, painting, poster, globe, telescope,
microscope, compass, magnifying glass, binoculars, camera, film camera, polaroid camera, phone,
smartphone, telephone, laptop, computer, desktop computer, monitor, keyboard, mouse, tablet, headphones,
earbuds, speaker, radio, television, tv, game console, controller, joystick, arcade machine, vinyl record,
record player, cassette tape, walkman, typewriter, sewing machine, guitar, electric guitar, acoustic guitar,
bass guitar, ukulele, violin, cello, harp, piano, grand piano, keyboard synthesizer, drum kit, drums,
trumpet, saxophone, flute, clarinet, accordion, harmonica, microphone, teddy bear, plush toy, stuffed animal,
doll, porcelain doll, action figure, toy car, toy train, toy robot, lego bricks, rubber duck, yo-yo,
kite, balloon, hot air balloon, ball, soccer ball, basketball, baseball, tennis racket, skateboard,
surfboard, snowboard, skis, sled, bicycle, tricycle, scooter, roller skates, dumbbell, trophy, medal,
crown, tiara, ring, necklace, bracelet, earrings, brooch, pendant, locket, amulet, gemstone, diamond, ruby,
emerald, sapphire, crystal, pearl, coin, gold coins, sword, katana, dagger, axe, spear, bow and arrow,
crossbow, shield, helmet, armor, gauntlet, staff, magic wand, wand, orb, crystal ball, potion, potion bottle,
spellbook, grimoire, skull, bone, feather, quill, inkwell, paintbrush, palette, easel, canvas, pencil,
pen, crayon, marker, eraser, scissors, glue, paper, origami crane, paper lantern, paper boat, fan,
folding fan, mask, venetian mask, gas mask, goggles, sunglasses, glasses, monocle, hat, top hat, bowler hat,
cowboy hat, straw hat, beret, beanie, cap, baseball cap, helmet, hood, scarf, glove, gloves, mitten, boot,
boots, shoe, shoes, sneakers, high heels, sandals, slippers, sock, tie, bow tie, belt, watch, fountain,
statue, sculpture, bust, monument, obelisk, totem pole, gravestone, tombstone, coffin, throne, altar,
chest, anvil, forge, spinning wheel, wheelbarrow, cart, wagon, birdcage, birdhouse, fishbowl, aquarium,
terrarium, snow globe, music box, jewelry box, dreamcatcher, wind chime, bell, church bell, gong, drum,
flag, banner, sign, neon sign, street sign, traffic light, street lamp, mailbox, phone booth, vending machine,
fire hydrant, parking meter, bus stop, billboard, robot arm, circuit board, computer chip, server rack,
satellite, satellite dish, antenna, solar panel, wind turbine, battery, light bulb, flashlight, candle holder""")

FOOD = P("""pizza, slice of pizza, pepperoni pizza, margherita pizza, burger, cheeseburger, hot dog, sandwich,
club sandwich, grilled cheese, taco, tacos, burrito, quesadilla, nachos, sushi, sashimi, nigiri, sushi roll,
ramen, bowl of ramen, udon, soba noodles, pho, pad thai, fried rice, dumplings, dim sum, bao buns, spring rolls,
curry, chicken curry, biryani, naan bread, kebab, falafel, hummus, shawarma, paella, risotto, lasagna,
spaghetti, spaghetti bolognese, carbonara, ravioli, gnocchi, mac and cheese, steak, roast chicken,
fried chicken, chicken wings, ribs, barbecue, pulled pork, bacon and eggs, omelette, scrambled eggs,
fried egg, eggs benedict, pancakes, waffles, french toast, crepes, croissant, bagel, muffin, scone,
cinnamon roll, donut, doughnut, churros, pretzel, baguette, loaf of bread, sourdough bread, toast,
avocado toast, salad, caesar salad, greek salad, soup, tomato soup, stew, chili, fish and chips, lobster,
oysters, shrimp, mussels, crab legs, grilled salmon, tuna, poke bowl, bento box, onigiri, tempura, gyoza,
mochi, dango, taiyaki, matcha, cake, chocolate cake, birthday cake, wedding cake, cheesecake, cupcake,
cupcakes, macarons, cookies, chocolate chip cookies, brownies, tiramisu, pie, apple pie, cherry pie,
lemon tart, pudding, custard, ice cream, ice cream cone, gelato, sundae, milkshake, popsicle, candy,
lollipop, cotton candy, gummy bears, chocolate, chocolate bar, truffles, honey, jam, cheese, cheese board,
charcuterie board, apple, green apple, banana, orange, lemon, lime, grapefruit, strawberry, strawberries,
blueberries, raspberries, cherries, grapes, watermelon, melon, pineapple, mango, papaya, peach, pear, plum,
kiwi, coconut, pomegranate, fig, dragon fruit, avocado, tomato, cucumber, carrot, potato, sweet potato,
onion, garlic, pepper, bell pepper, chili pepper, broccoli, cauliflower, cabbage, lettuce, spinach, kale,
corn, pumpkin, squash, zucchini, eggplant, mushroom, mushrooms, peas, beans, rice, bowl of rice, noodles,
popcorn, french fries, potato chips, coffee, cup of coffee, latte, cappuccino, espresso, tea, cup of tea,
green tea, bubble tea, hot chocolate, lemonade, orange juice, smoothie, milk, water, wine, red wine,
champagne, beer, pint of beer, cocktail, martini, mojito, whiskey, sake, soda, cola, energy drink,
breakfast, lunch, dinner, feast, picnic, buffet, dessert, snack, street food, fast food, fine dining dish""")

FOOD_SERVING = P("""a plate of, a bowl of, a box of, a basket of, a tray of, a stack of, a slice of, a jar of,
a cup of, a glass of, a pile of, a platter of, a bunch of, a handful of, a spoonful of""")

VEHICLES = P("""car, sports car, race car, muscle car, vintage car, classic car, convertible, sedan, hatchback,
suv, jeep, pickup truck, truck, semi truck, fire truck, ambulance, police car, taxi, limousine, van,
camper van, minivan, bus, school bus, double decker bus, tram, streetcar, trolley, train, steam train,
steam locomotive, bullet train, subway train, monorail, motorcycle, motorbike, dirt bike, scooter, vespa,
moped, bicycle, mountain bike, tandem bicycle, tractor, bulldozer, excavator, crane, forklift, tank,
armored vehicle, humvee, boat, rowboat, canoe, kayak, sailboat, yacht, speedboat, fishing boat, ferry,
cruise ship, cargo ship, container ship, tugboat, gondola, junk ship, pirate ship, galleon, viking ship,
warship, battleship, aircraft carrier, submarine, airplane, plane, jet, fighter jet, passenger jet,
biplane, seaplane, glider, helicopter, blimp, zeppelin, airship, hot air balloon, rocket, space shuttle,
spaceship, starship, space station, satellite, lunar lander, rover, mars rover, flying car, hover bike,
hovercraft, mech walker, carriage, horse carriage, stagecoach, chariot, rickshaw, tuk tuk, sled, dog sled,
snowmobile, golf cart, go-kart, skateboard, segway, hoverboard, food truck, ice cream truck, delivery van""")

CAR_MAKES = P("""porsche 911, ferrari, lamborghini, mustang, corvette, volkswagen beetle, vw bus, mini cooper,
land rover defender, toyota supra, nissan skyline, mazda miata, honda civic, tesla, delorean, cadillac,
rolls royce, jaguar e-type, fiat 500, citroen 2cv, ford model t, jeep wrangler""")

BUILDINGS = P("""house, cottage, cabin, log cabin, farmhouse, barn, mansion, villa, bungalow, townhouse,
apartment building, skyscraper, tower, clock tower, bell tower, water tower, lighthouse, windmill,
castle, fortress, citadel, palace, chateau, manor, temple, pagoda, shrine, shinto shrine, torii gate,
church, chapel, cathedral, gothic cathedral, mosque, synagogue, monastery, abbey, ruins, ancient ruins,
pyramid, ziggurat, colosseum, amphitheater, parthenon, greek temple, roman aqueduct, arch, triumphal arch,
bridge, stone bridge, suspension bridge, covered bridge, rope bridge, dam, tunnel, gate, wall, great wall,
school, university, library, museum, gallery, theater, opera house, cinema, concert hall, stadium, arena,
hospital, police station, fire station, train station, bus station, airport, harbor, port, dock, pier,
marina, boardwalk, shop, store, bakery, cafe, coffee shop, restaurant, diner, bar, pub, tavern, inn, hotel,
motel, gas station, factory, warehouse, power plant, nuclear plant, refinery, greenhouse, observatory,
laboratory, space station, research base, bunker, treehouse, igloo, tent, yurt, hut, shack, teahouse,
bathhouse, hot spring inn, ryokan, market hall, bazaar, fountain, plaza, courtyard, garden pavilion,
gazebo, pergola, conservatory, attic, basement, cellar, dungeon, throne room, great hall, ballroom,
banquet hall, kitchen, living room, bedroom, bathroom, dining room, study, office, classroom, corridor,
hallway, lobby, elevator, stairwell, balcony, terrace, rooftop, porch, veranda, patio, backyard, garage,
workshop, studio apartment, loft, penthouse, mall, supermarket, laundromat, arcade, bowling alley,
casino, nightclub, karaoke bar, ramen shop, noodle stand, flower shop, bookstore, toy shop, antique shop,
pawn shop, barber shop, tattoo parlor, gym, swimming pool, water park, amusement park, ferris wheel,
roller coaster, carousel, circus tent, zoo, aquarium, botanical garden, cemetery, mausoleum, crypt,
catacombs, sewer, subway station, metro station, parking garage, highway overpass, skyline""")

ARCH_STYLES = P("""gothic architecture, baroque architecture, victorian architecture, art deco building,
art nouveau facade, brutalist architecture, modernist architecture, bauhaus, mid-century modern house,
scandinavian interior, japanese architecture, traditional chinese architecture, islamic architecture,
moorish arches, byzantine dome, romanesque, neoclassical columns, georgian townhouse, tudor house,
mediterranean villa, futuristic architecture, parametric architecture, deconstructivism, organic architecture,
eco-friendly building, vertical garden skyscraper, glass and steel, concrete and wood, half-timbered houses""")

PLANTS = P("""rose, red rose, white rose, tulip, sunflower, daisy, lily, lotus, water lily, orchid, lavender,
cherry blossom, sakura, plum blossom, magnolia, peony, hydrangea, hibiscus, jasmine, dandelion, poppy,
iris, violet, marigold, chrysanthemum, carnation, daffodil, bluebell, foxglove, wisteria, bougainvillea,
camellia, gardenia, azalea, geranium, begonia, forget-me-not, lilac, clover, thistle, fern, moss, ivy,
vines, bamboo, cactus, succulent, aloe vera, bonsai tree, palm tree, coconut palm, oak tree, maple tree,
willow tree, weeping willow, birch tree, pine tree, spruce, fir tree, cedar, cypress, redwood, sequoia,
baobab, olive tree, apple tree, cherry tree, banyan tree, mangrove, eucalyptus, grass, tall grass, wheat,
reeds, seaweed, kelp, coral, lichen, mushroom, toadstool, fly agaric, glowing mushrooms, flower bouquet,
wreath, flower crown, garland, potted plant, houseplant, monstera, herbs, basil, rosemary, mint""")

NATURE = P("""mountain, mountains, snowy mountains, mountain peak, volcano, erupting volcano, hill, rolling hills,
valley, canyon, gorge, cliff, cliffs, rock formation, boulder, cave, glacier, iceberg, ice cave, fjord,
waterfall, river, stream, creek, lake, pond, ocean, sea, waves, beach, sandy beach, rocky shore, coast,
coastline, bay, lagoon, island, tropical island, desert, sand dunes, oasis, savanna, prairie, meadow,
field, wheat field, rice field, rice terraces, vineyard, orchard, forest, pine forest, bamboo forest,
rainforest, jungle, swamp, marsh, bog, wetlands, tundra, steppe, plateau, mesa, badlands, salt flats,
hot springs, geyser, reef, coral reef, deep sea, abyss, sky, clouds, storm clouds, thunderstorm, rainbow,
aurora, northern lights, milky way, night sky, starry sky, stars, moon, full moon, crescent moon, sun,
sunrise, sunset, eclipse, galaxy, nebula, planet, planets, asteroid field, comet, black hole, outer space""")

# ----------------------------------------------------------------------------------------------
# Attributes
# ----------------------------------------------------------------------------------------------

COLORS = W("""red crimson scarlet ruby burgundy maroon wine-red cherry blue navy cobalt azure sapphire cerulean
teal turquoise cyan aqua green emerald jade olive lime mint sage forest-green yellow golden gold mustard lemon
amber orange tangerine peach coral salmon pink rose magenta fuchsia hot-pink pastel-pink purple violet lavender
lilac plum mauve indigo white ivory cream beige tan khaki brown chocolate chestnut copper bronze rust
black charcoal grey gray silver platinum pearl iridescent holographic rainbow neon multicolored""")

PALETTES = P("""pastel colors, muted colors, vibrant colors, vivid colors, saturated colors, desaturated,
monochrome, black and white, sepia, sepia tone, warm tones, cool tones, earth tones, neon colors,
complementary colors, analogous colors, limited palette, duotone, high contrast, low contrast, teal and orange,
pink and blue, purple and gold, red and black, blue hour palette, autumn palette, candy colors,
rich colors, soft colors, bold colors, faded colors, washed colors, color grading, cinematic color grading""")

MATERIALS = W("""wooden oak pine bamboo metal steel iron brass copper bronze golden silver chrome titanium aluminum
glass crystal ceramic porcelain clay terracotta stone marble granite concrete brick plastic rubber leather
suede velvet silk satin cotton linen denim wool woolen knitted crocheted felt fur fluffy furry feathered
paper cardboard origami wicker rattan lace embroidered beaded jeweled gilded lacquered enameled carved
woven quilted patchwork ice icy frozen liquid molten smoky glowing translucent transparent shiny glossy
matte polished brushed rusty weathered cracked chipped mossy overgrown""")

SIZES = W("""tiny small little miniature mini petite medium large big huge giant gigantic enormous colossal massive
tall short long wide narrow thin slender chubby round square""")

AGES_CONDITION = W("""old ancient antique vintage retro classic modern futuristic new brand-new shiny worn battered
broken abandoned ruined rusty dusty dirty clean pristine damaged cracked faded weathered handmade homemade
decorated ornate elaborate simple plain rustic elegant luxurious cheap expensive fancy humble""")

ADJECTIVES = W("""beautiful gorgeous stunning pretty cute adorable lovely charming elegant graceful majestic
magnificent epic grand glorious dramatic mysterious mystical magical enchanted ethereal dreamy surreal
whimsical playful quirky funny silly strange weird bizarre eerie creepy spooky scary sinister ominous
dark gloomy moody melancholic sad lonely peaceful serene calm tranquil quiet cozy warm inviting cheerful
joyful happy bright sunny vibrant colorful lively bustling busy crowded empty desolate barren lush green
verdant wild untamed pristine idyllic romantic nostalgic bittersweet hopeful heroic brave fierce powerful
mighty strong muscular athletic fit slim skinny tall petite cute handsome rugged scruffy wrinkled
intricate detailed delicate fragile sturdy heavy light sleek smooth rough sharp soft gentle harsh bold
subtle minimal minimalist maximalist ornate baroque gothic industrial organic geometric symmetrical
asymmetrical chaotic orderly tidy messy cluttered clean futuristic retro vintage timeless iconic legendary
mythical celestial cosmic infernal divine holy sacred haunted cursed blessed radiant luminous glowing
shimmering sparkling glittering dazzling gleaming translucent hazy misty foggy smoky stormy windy rainy
snowy frosty icy sunlit moonlit starlit candlelit""")

MOODS = W("""happy sad angry calm sleepy tired bored excited curious shy proud scared surprised confused
nervous anxious relaxed content grumpy sulking smiling laughing crying screaming shouting whispering
thoughtful pensive dreamy determined confident serious stern smug mischievous playful friendly gentle
fierce menacing innocent naive wise melancholic lonely hopeful joyful ecstatic serene focused""")

EXPRESSIONS = P("""smiling, big smile, gentle smile, smirk, grin, laughing, open mouth, closed mouth, pout,
frown, crying, tears, teary eyes, blushing, blush, embarrassed, surprised, shocked, angry, annoyed,
serious expression, neutral expression, expressionless, sad expression, worried, scared, determined look,
confident look, tired eyes, sleepy eyes, half-closed eyes, closed eyes, one eye closed, wink, tongue out,
looking at viewer, looking away, looking up, looking down, looking back, looking to the side,
looking at the camera, eye contact, staring, glaring, daydreaming""")

HAIR_COLORS = W("""blonde platinum-blonde golden brunette brown dark-brown light-brown auburn ginger red copper
black jet-black raven silver white grey gray pink pastel-pink blue light-blue purple lavender green teal
multicolored two-tone gradient ombre rainbow""")

HAIR_STYLES = P("""long hair, very long hair, short hair, medium hair, shoulder-length hair, bob cut, pixie cut,
buzz cut, shaved head, bald, undercut, mohawk, curly hair, wavy hair, straight hair, messy hair, spiky hair,
fluffy hair, braided hair, braid, single braid, twin braids, french braid, braided crown, ponytail,
high ponytail, side ponytail, twintails, pigtails, bun, hair bun, double bun, messy bun, topknot,
dreadlocks, afro, cornrows, bangs, blunt bangs, side-swept bangs, hair over one eye, ahoge, sidelocks,
hime cut, hair ribbon, hair bow, hair flower, hairclip, hairband, headband, hair ornament, wet hair,
windswept hair, floating hair, slicked back hair, man bun, beard, full beard, stubble, mustache, goatee,
sideburns, braided beard, long beard, white beard""")

EYES = P("""blue eyes, green eyes, brown eyes, hazel eyes, grey eyes, amber eyes, golden eyes, red eyes,
purple eyes, violet eyes, pink eyes, yellow eyes, black eyes, heterochromia, glowing eyes, sparkling eyes,
big eyes, beautiful detailed eyes, almond-shaped eyes, slit pupils, cat eyes, long eyelashes,
eyeliner, eyeshadow, thick eyebrows""")

FACE_BODY = P("""freckles, dimples, beauty mark, mole, scar, facial scar, tattoo, face tattoo, sleeve tattoo,
piercings, nose ring, lip piercing, earrings, makeup, red lipstick, natural makeup, no makeup, pale skin,
fair skin, tan skin, dark skin, olive skin, sun-kissed skin, wrinkles, laugh lines, rosy cheeks,
sharp jawline, high cheekbones, round face, oval face, pointed ears, elf ears, animal ears, cat ears,
fox ears, wolf ears, bunny ears, horns, demon horns, halo, wings, angel wings, bat wings, fairy wings,
tail, fox tail, cat tail, fangs, claws, glasses, round glasses, sunglasses, eyepatch, bandages,
prosthetic arm, mechanical arm, cybernetic implants, glowing tattoos, body paint, war paint""")

CLOTHING = P("""dress, sundress, summer dress, evening gown, ball gown, wedding dress, cocktail dress,
little black dress, maxi dress, floral dress, lace dress, kimono, yukata, hanbok, qipao, cheongsam, sari,
saree, kilt, toga, tunic, robe, wizard robe, monk robes, cloak, hooded cloak, cape, poncho, shawl,
coat, trench coat, overcoat, fur coat, raincoat, parka, puffer jacket, jacket, leather jacket,
denim jacket, bomber jacket, varsity jacket, blazer, suit, three-piece suit, tuxedo, waistcoat, vest,
shirt, white shirt, dress shirt, t-shirt, tank top, crop top, blouse, sweater, turtleneck, cardigan,
hoodie, sweatshirt, jersey, polo shirt, flannel shirt, hawaiian shirt, pajamas, nightgown, bathrobe,
jeans, ripped jeans, trousers, pants, cargo pants, shorts, skirt, miniskirt, pleated skirt, long skirt,
leggings, tights, stockings, thigh-high socks, overalls, jumpsuit, uniform, school uniform, sailor uniform,
military uniform, police uniform, nurse uniform, maid outfit, chef uniform, lab coat, scrubs, apron,
work clothes, coveralls, spacesuit, space suit, diving suit, wetsuit, swimsuit, tracksuit,
sportswear, gym clothes, armor, plate armor, chainmail, leather armor, samurai armor, power armor,
tactical gear, bulletproof vest, combat uniform, camouflage, streetwear, techwear, gothic lolita dress,
victorian dress, regency dress, medieval dress, renaissance clothes, 1920s flapper dress, 1950s dress,
1970s outfit, 80s fashion, 90s fashion, y2k fashion, traditional clothing, folk costume, tribal clothing,
hanfu, ao dai, dirndl, lederhosen, sombrero, poncho, cowboy boots, combat boots, rain boots, knee-high boots,
scarf, necktie, bow tie, gloves, fingerless gloves, mittens, beanie, beret, fedora, bucket hat, sun hat,
witch hat, crown, tiara, veil, headscarf, turban, hijab, bandana, headphones around neck, choker, cape""")

POSES_ACTIONS = P("""sitting, standing, walking, running, jumping, dancing, sleeping, lying down, lying on the grass,
kneeling, crouching, squatting, leaning against a wall, sitting on a bench, sitting on the floor,
sitting cross-legged, hugging knees, stretching, yawning, waving, pointing, clapping, praying, meditating,
reading a book, writing a letter, drawing, painting a picture, playing the guitar, playing the piano,
playing the violin, singing into a microphone, listening to music, taking a photo, holding a camera,
drinking coffee, drinking tea, eating, cooking dinner, baking bread, chopping vegetables, tasting soup,
pouring wine, holding a cup, holding a flower, holding a sword, holding a book, holding a lantern,
holding an umbrella, holding hands, hugging, kissing, dancing together, arguing, talking, whispering,
laughing together, playing chess, playing cards, playing video games, typing on a laptop, working at a desk,
studying, sleeping at a desk, looking out the window, gazing at the stars, watching the sunset,
walking the dog, riding a horse, riding a bicycle, riding a motorcycle, driving a car, flying a kite,
swimming, surfing a wave, diving, fishing, rowing a boat, sailing, climbing a mountain, hiking, camping,
skiing, snowboarding, ice skating, skateboarding, doing yoga, lifting weights, boxing, fencing, sword fighting,
casting a spell, flying, floating, levitating, falling, exploring, searching, hiding, sneaking, hunting,
gardening, watering plants, picking flowers, feeding birds, petting a cat, playing with a dog, chasing butterflies,
building a sandcastle, making a snowman, blowing bubbles, blowing out candles, opening a gift, shopping,
waiting for the bus, crossing the street, looking in the mirror, brushing hair, putting on makeup,
getting dressed, taking a bath, waking up, stargazing, daydreaming, peeking out, hands in pockets,
arms crossed, hands on hips, hand on chin, head tilt, contrapposto, dynamic pose, action pose, battle stance,
fighting stance, victory pose, peace sign, thumbs up, reaching out, outstretched arms, back to viewer,
from behind, over the shoulder, profile view, three-quarter view""")

ANIMAL_ACTIONS = P("""sleeping, napping, curled up, sitting, lying down, stretching, yawning, running, jumping,
pouncing, playing, playing with a ball, chasing its tail, fetching a stick, digging, swimming, splashing,
flying, soaring, gliding, perched on a branch, nesting, hunting, stalking prey, grazing, eating, drinking water,
howling, roaring, barking, meowing, grooming, licking its paw, looking at the camera, peeking out of a box,
hiding in the grass, climbing a tree, walking on a leash, wearing a scarf, wearing a tiny hat, wearing glasses,
in a basket, in a teacup, on a pillow, under a blanket""")

# ----------------------------------------------------------------------------------------------
# Places and time
# ----------------------------------------------------------------------------------------------

PLACES = P("""on a beach, on a tropical beach, on a rocky shore, in a forest, in a dark forest, in an enchanted forest,
in a pine forest, in a bamboo forest, in a rainforest, in the jungle, in the mountains, on a mountain peak,
on a hill, in a valley, in a canyon, in the desert, among sand dunes, in an oasis, on the savanna,
in a meadow, in a field of flowers, in a sunflower field, in a wheat field, in a rice paddy, in a vineyard,
in an orchard, by a lake, by a river, by a waterfall, by the sea, on a cliff, on a cliff overlooking the ocean,
on an island, on a frozen lake, in the snow, in a snowy forest, in the arctic, on a glacier, in a cave,
in a crystal cave, underwater, at the bottom of the sea, in a coral reef, in space, on the moon, on mars,
on an alien planet, in orbit, aboard a spaceship, on a space station, in a city, in a big city,
on a city street, in a busy street, in an alley, in a back alley, in a narrow street, on a cobblestone street,
in a small town, in a village, in a fishing village, in a mountain village, in the countryside, on a farm,
in a barn, in a stable, in a garden, in a flower garden, in a japanese garden, in a zen garden, in a greenhouse,
in a park, in central park, on a playground, in a backyard, on a porch, on a balcony, on a rooftop,
on a terrace, at a bus stop, at a train station, on a train platform, on a train, in a subway car,
in the subway, at an airport, on a plane, in a car, on a highway, on a country road, on a dirt road,
at a gas station, in a parking lot, at a crossroads, on a bridge, under a bridge, at a harbor, on a pier,
on a boat, on a ship deck, in a kitchen, in a cozy kitchen, in a living room, in a bedroom, in a bathroom,
in a dining room, in an attic, in a basement, in a library, in an old library, in a study, in an office,
in a classroom, in a school hallway, in a hospital, in a laboratory, in a workshop, in a garage,
in a factory, in a warehouse, in a cafe, in a coffee shop, in a restaurant, in a diner, in a bar, in a pub,
in a tavern, at a market, at a night market, at a flea market, in a supermarket, in a mall, in a bookstore,
in a bakery, in a flower shop, in a museum, in an art gallery, in a theater, on a stage, at a concert,
at a festival, at a party, at a wedding, at a funeral, in a church, in a cathedral, in a temple,
at a shrine, in a castle, in a throne room, in a dungeon, in a ruined castle, in ancient ruins,
in a haunted house, in a graveyard, in a cemetery, in a tent, at a campsite, around a campfire,
in a treehouse, in a cabin, in a log cabin, in a hot spring, in a swimming pool, at a water park,
at an amusement park, at the circus, at the zoo, in an aquarium, in a stadium, on a football field,
on a tennis court, in a boxing ring, in a gym, on a racetrack, in a studio, in a photo studio,
on a white background, on a black background, on a plain background, on a gradient background,
against a brick wall, in front of a graffiti wall, in front of a window, on a wooden table,
on a kitchen counter, on a desk, on a shelf, on a windowsill, on a bed, on a sofa, on the floor,
in a box, in a jar, in a bottle, in a terrarium, in a snow globe, on a cloud, in the sky, above the clouds,
in a dream, in another dimension, in a parallel world, in a video game, in a fairy tale, in a post-apocalyptic city,
in a cyberpunk city, in a futuristic city, in a steampunk city, in a medieval town, in a fantasy kingdom,
in an elven city, in a dwarven mine, in a wizard's tower, in a witch's hut, in a magic academy,
in a space colony, in a bunker, in a wasteland, in an abandoned factory, in an abandoned hospital,
in an overgrown city, in a flooded city, in a ghost town, on a battlefield, in a war zone, in a trench""")

CITIES = P("""paris, london, new york, tokyo, kyoto, osaka, seoul, beijing, shanghai, hong kong, taipei, bangkok,
singapore, hanoi, mumbai, delhi, jaipur, dubai, istanbul, cairo, marrakech, cape town, nairobi, lagos,
rome, venice, florence, milan, naples, barcelona, madrid, seville, lisbon, porto, amsterdam, berlin,
munich, vienna, prague, budapest, krakow, stockholm, copenhagen, oslo, helsinki, reykjavik, dublin,
edinburgh, moscow, saint petersburg, athens, santorini, dubrovnik, san francisco, los angeles, las vegas,
chicago, boston, seattle, miami, new orleans, havana, mexico city, rio de janeiro, buenos aires, lima,
cusco, toronto, vancouver, montreal, sydney, melbourne, auckland, hawaii, bali, kathmandu, tibet,
iceland, norway, scotland, ireland, provence, tuscany, swiss alps, patagonia, the sahara, the amazon,
the himalayas, the grand canyon, yosemite, yellowstone, machu picchu, petra, angkor wat, mount fuji,
new york city, manhattan, brooklyn, times square, shibuya, shinjuku, akihabara, montmartre""")

NATIONALITIES = W("""japanese chinese korean vietnamese thai indian nepali filipino indonesian mongolian tibetan
arab persian turkish egyptian moroccan nigerian kenyan ethiopian african american mexican brazilian
argentinian peruvian cuban canadian native-american inuit scottish irish english welsh french italian spanish
portuguese greek german dutch swedish norwegian danish finnish icelandic russian ukrainian polish
scandinavian mediterranean nordic slavic""")

TIME_WEATHER = P("""at sunrise, at dawn, in the morning, early morning, at noon, midday, in the afternoon,
late afternoon, at golden hour, at sunset, at dusk, at twilight, during blue hour, in the evening, at night,
at midnight, late at night, under the stars, under a full moon, on a sunny day, on a cloudy day,
on an overcast day, on a rainy day, in the rain, in heavy rain, in a thunderstorm, during a storm,
in the fog, in thick fog, in the mist, in the snow, during a blizzard, in a sandstorm, on a windy day,
after the rain, in spring, in summer, in autumn, in fall, in winter, on christmas eve, on halloween night,
during cherry blossom season, during a heatwave, in the monsoon, during an eclipse, during the apocalypse""")

WEATHER_TAGS = P("""rain, heavy rain, drizzle, raindrops, puddles, wet ground, snow, falling snow, snowflakes,
blizzard, frost, ice, fog, mist, haze, smog, dust, sandstorm, wind, strong wind, storm, thunderstorm,
lightning, clouds, cumulus clouds, overcast, clear sky, blue sky, cloudy sky, dramatic sky, stormy sky,
sunset sky, pink sky, orange sky, starry night, night sky, moonlight, sunlight, heat haze, falling leaves,
autumn leaves, cherry blossom petals, falling petals, fireflies, floating particles, embers, sparks, smoke,
steam, bubbles, confetti, fireworks, light rain, morning dew, icicles, rainbow""")

# ----------------------------------------------------------------------------------------------
# Styles, media, photography
# ----------------------------------------------------------------------------------------------

SHOTS = P("""a photo of, a photograph of, a close-up photo of, a close up of, a candid photo of, a portrait of,
a portrait photo of, a headshot of, a full body photo of, a wide shot of, a wide angle photo of,
an aerial photo of, a drone shot of, a macro photo of, a blurry photo of, a black and white photo of,
a vintage photo of, an old photo of, a polaroid of, a film photo of, a snapshot of, a selfie of,
a stock photo of, a product photo of, a professional photo of, an amateur photo of, a cinematic still of,
a movie still of, a screenshot of, a security camera image of, a night photo of, a long exposure photo of,
an image of, a picture of, a rendering of, a 3d render of, a render of, a painting of, an oil painting of,
an acrylic painting of, a watercolor painting of, a watercolor of, a gouache painting of, a pastel drawing of,
an ink drawing of, a pen and ink drawing of, a pencil sketch of, a charcoal drawing of, a sketch of,
a drawing of, a doodle of, a digital painting of, digital art of, an illustration of, a cartoon of,
a comic panel of, a manga panel of, an anime screenshot of, an anime illustration of, concept art of,
a matte painting of, a poster of, a vintage poster of, a propaganda poster of, a book cover of,
an album cover of, a children's book illustration of, a storybook illustration of, a sticker of,
an icon of, a logo of, an emoji of, a pixel art of, a low poly render of, a voxel art of, a clay model of,
a claymation still of, a figurine of, a toy of, a lego model of, a papercraft of, a paper cutout of,
a mosaic of, a stained glass window of, a tapestry of, an embroidery of, a woodcut of, a linocut print of,
an etching of, an engraving of, a lithograph of, a screen print of, a blueprint of, a diagram of,
a technical drawing of, a tattoo design of, a graffiti of, a mural of, a fresco of, an icon painting of,
a miniature painting of, a sculpture of, a marble statue of, a bronze sculpture of, a wood carving of,
a chalk drawing of, a crayon drawing of, a child's drawing of, a coloring book page of, a line art of""")

MEDIA = P("""photograph, photography, digital photography, film photography, analog photo, polaroid,
oil painting, oil on canvas, acrylic painting, watercolor, watercolor painting, gouache, tempera, pastel,
oil pastel, chalk pastel, charcoal, graphite, pencil drawing, colored pencil, ink, ink wash, sumi-e,
pen and ink, marker drawing, crayon, fresco, mural, mosaic, stained glass, tapestry, embroidery, woodcut,
linocut, etching, engraving, lithograph, screen print, risograph, collage, mixed media, digital painting,
digital art, digital illustration, vector art, vector illustration, flat illustration, line art,
concept art, matte painting, speed painting, sketch, rough sketch, croquis, study, character sheet,
character design, turnaround, sprite sheet, pixel art, 8-bit, 16-bit, voxel art, low poly, 3d render,
3d model, 3d illustration, cgi, clay render, claymation, stop motion, papercraft, paper cut art, origami art,
sculpture, marble sculpture, bronze statue, wood carving, ceramic figurine, miniature, diorama, tilt-shift,
infographic, blueprint, technical illustration, scientific illustration, botanical illustration,
anatomical drawing, map, comic, comic book, graphic novel, manga, manhwa, webtoon, anime, cartoon,
animation, cel shading, cel-shaded, toon shading, storyboard, poster, movie poster, book cover, album art,
sticker, decal, emblem, badge, logo design, icon set, ui design, tarot card, trading card, playing card,
postage stamp, banknote engraving, tattoo flash, graffiti, street art""")

ART_MOVEMENTS = P("""impressionism, post-impressionism, expressionism, abstract expressionism, cubism, surrealism,
dadaism, futurism, fauvism, pointillism, art nouveau, art deco, bauhaus, constructivism, suprematism,
minimalism, pop art, op art, realism, photorealism, hyperrealism, romanticism, neoclassicism, baroque,
rococo, renaissance, high renaissance, early renaissance, mannerism, gothic art, medieval art, byzantine art,
ukiyo-e, japanese woodblock print, chinese ink painting, persian miniature, mughal painting, aboriginal art,
tribal art, folk art, naive art, outsider art, lowbrow art, pre-raphaelite, symbolism, tonalism,
hudson river school, dutch golden age, flemish painting, academic art, social realism, magical realism,
precisionism, vorticism, tenebrism, chiaroscuro, sfumato, impasto, art brut, street art, pixel art,
vaporwave, synthwave, retrowave, outrun, lo-fi, glitch art, cyberpunk, steampunk, dieselpunk, solarpunk,
biopunk, atompunk, cassette futurism, retro futurism, afrofuturism, cottagecore, dark academia,
light academia, goblincore, fairycore, witchcore, grunge, punk, gothic, dark fantasy, high fantasy,
sword and sorcery, space opera, hard sci-fi, post-apocalyptic, dystopian, utopian, noir, film noir,
neo-noir, western, spaghetti western, wuxia, kawaii, chibi, moe, shoujo, shonen, seinen, mecha anime,
isekai, magical girl, y2k aesthetic, memphis design, swiss design, scandinavian design, mid-century modern,
brutalism, wabi-sabi, zen, bohemian, psychedelic, trippy, fractal, sacred geometry, op-art illusion""")

STYLE_TAGS = P("""photorealistic, realistic, ultra realistic, hyperrealistic, hyper-realistic, lifelike,
stylized, semi-realistic, painterly, illustrative, cinematic, filmic, editorial, documentary,
anime style, manga style, cartoon style, disney style, pixar style, dreamworks style, studio ghibli style,
ghibli inspired, 90s anime, 80s anime, retro anime, modern anime, kyoto animation style, cel animation,
comic book style, western comic, franco-belgian comic, ligne claire, pulp magazine cover, vintage illustration,
mid-century illustration, storybook style, fairy tale illustration, children's book style, picture book,
watercolor style, oil painting style, impasto style, sketch style, ink style, line art style, flat design,
flat colors, minimalist design, geometric style, isometric, isometric view, low poly style, voxel style,
pixel art style, 3d style, clay style, plastic toy style, vinyl figure, funko pop style, chibi style,
kawaii style, gothic style, victorian style, medieval style, baroque style, art nouveau style, art deco style,
ukiyo-e style, chinese painting style, korean painting style, tribal style, psychedelic style, vaporwave style,
synthwave style, cyberpunk style, steampunk style, fantasy style, sci-fi style, horror style, lovecraftian,
surreal style, dreamlike, abstract, expressive brushstrokes, loose brushwork, thick brush strokes,
visible brush strokes, palette knife, smooth shading, soft shading, hard shading, cross-hatching, stippling,
halftone, screentone, grainy texture, paper texture, canvas texture, rough texture, glossy finish, matte finish,
trending on artstation, featured on artstation, artstation hq, trending on pixiv, pixiv, deviantart, behance,
dribbble, cgsociety, unsplash, flickr, 500px, instagram, pinterest aesthetic, tumblr aesthetic, award-winning,
award winning, editor's choice, national geographic, vogue, magazine cover, time magazine cover""")

RENDER_TERMS = P("""octane render, unreal engine, unreal engine 5, unity engine, blender, cycles render, eevee,
cinema 4d, c4d, redshift render, v-ray, arnold render, keyshot, maya, zbrush, substance painter, houdini,
ray tracing, path tracing, global illumination, ambient occlusion, subsurface scattering, physically based rendering,
pbr, volumetric rendering, photogrammetry, 3d scan, raytraced reflections, lumen, nanite, real-time render,
game asset, game art, video game screenshot, ps5 graphics, next-gen graphics, hdri, 3d printed""")

PHOTO_GENRES = P("""portrait photography, fashion photography, street photography, landscape photography,
wildlife photography, nature photography, macro photography, food photography, product photography,
architectural photography, interior photography, real estate photo, travel photography, documentary photography,
photojournalism, sports photography, event photography, wedding photography, concert photography,
astrophotography, night photography, underwater photography, aerial photography, drone photography,
glamour portrait, beauty photography, editorial photography, commercial photography,
advertising photography, stock photography, lifestyle photography, candid photography, snapshot aesthetic,
fine art photography, conceptual photography, still life photography, analog photography, lomography,
infrared photography, long exposure photography, tilt-shift photography, high speed photography,
film still, movie still, cinematic shot, behind the scenes photo, paparazzi photo, press photo,
passport photo, mugshot, school photo, family photo, vacation photo, polaroid photo, cctv footage,
bodycam footage, dashcam footage, webcam photo, thermal image, x-ray, satellite image, microscope image""")

CAMERAS = P("""shot on canon eos r5, canon 5d mark iv, nikon d850, nikon z9, sony a7r iv, sony a7 iii,
fujifilm x-t4, fujifilm gfx 100, leica m6, leica m10, leica q2, hasselblad x2d, hasselblad 500c,
mamiya rz67, pentax 67, contax t2, olympus mju, ricoh gr, iphone photo, shot on iphone, smartphone photo,
gopro, dslr, mirrorless camera, medium format, large format, 35mm film, 120 film, 8x10 film, super 8,
16mm film, imax, arri alexa, red camera, panavision, vhs footage, camcorder footage, disposable camera,
kodak portra 400, kodak portra 160, kodak ektar 100, kodak gold 200, kodachrome, ektachrome, fuji velvia,
fuji superia, cinestill 800t, ilford hp5, ilford delta, kodak tri-x, agfa vista, expired film""")

LENS_SETTINGS = P("""85mm lens, 50mm lens, 35mm lens, 24mm lens, 14mm lens, 135mm lens, 200mm lens, 300mm lens,
600mm telephoto, 100mm macro lens, wide angle lens, ultra wide angle, fisheye lens, telephoto lens,
zoom lens, prime lens, tilt-shift lens, anamorphic lens, vintage lens, helios 44, f/1.2, f/1.4, f/1.8, f/2,
f/2.8, f/4, f/5.6, f/8, f/11, f/16, iso 100, iso 200, iso 400, iso 800, iso 3200, 1/1000s, 1/250s,
1/60s, long exposure, 30 second exposure, slow shutter, fast shutter speed, high shutter speed,
shallow depth of field, deep depth of field, narrow depth of field, depth of field, dof, bokeh,
creamy bokeh, swirly bokeh, background blur, blurred background, out of focus background, sharp focus,
soft focus, selective focus, focus stacking, motion blur, panning shot, lens flare, anamorphic flare,
light leaks, film grain, grain, noise, chromatic aberration, vignette, vignetting, halation, double exposure,
overexposed, underexposed, high key, low key, hdr, high dynamic range, raw photo, unedited, color corrected,
color graded, polarizing filter, nd filter, star filter, diffusion filter, pro mist filter""")

SHOT_TYPES = P("""close-up, extreme close-up, close up, medium shot, medium close-up, cowboy shot,
full shot, full body, full body shot, upper body, lower body, head and shoulders, portrait, bust shot,
wide shot, extreme wide shot, establishing shot, long shot, two shot, group shot, over the shoulder shot,
point of view, pov, first person view, low angle, low angle shot, high angle, high angle shot,
bird's eye view, worm's eye view, eye level, dutch angle, tilted frame, from above, from below, from side,
from behind, front view, side view, back view, top-down view, overhead shot, aerial view, isometric view,
three-quarter view, profile, silhouette, centered, centered composition, symmetrical composition,
rule of thirds, golden ratio, leading lines, negative space, frame within a frame, minimalist composition,
dynamic composition, diagonal composition, balanced composition, depth, foreground, background, midground,
panorama, panoramic, wide panorama, vertical composition, portrait orientation, landscape orientation,
cinematic composition, cinematic framing, letterbox, 16:9, widescreen, split screen, triptych, diptych,
knolling, flat lay, product shot, hero shot, macro shot, detail shot, action shot, candid shot, selfie""")

LIGHTING = P("""soft light, soft lighting, hard light, harsh light, natural light, natural lighting, daylight,
sunlight, direct sunlight, dappled sunlight, sun rays, god rays, crepuscular rays, light rays, light shafts,
volumetric light, volumetric lighting, volumetric fog, golden hour light, blue hour light, magic hour,
warm light, cold light, cool light, moonlight, candlelight, firelight, lantern light, torchlight,
neon light, neon lights, neon glow, fluorescent light, led lights, fairy lights, string lights,
christmas lights, street lights, city lights, headlights, studio lighting, studio light, softbox,
ring light, beauty dish, three-point lighting, key light, fill light, rim light, rim lighting, backlight,
backlit, backlighting, side light, side lighting, top light, under lighting, split lighting,
rembrandt lighting, butterfly lighting, loop lighting, broad lighting, chiaroscuro lighting, dramatic lighting,
cinematic lighting, moody lighting, dim lighting, low light, dark lighting, high contrast lighting,
flat lighting, even lighting, diffused light, overcast light, window light, skylight, ambient light,
ambient lighting, bounce light, reflected light, caustics, light reflections, specular highlights,
glow, glowing, bioluminescence, bioluminescent glow, light painting, lens glow, bloom, halo effect,
silhouette lighting, spotlight, stage lighting, concert lighting, laser lights, disco lights, colored gels,
red and blue lighting, purple lighting, teal lighting, orange glow, pink glow, golden light, silver light,
sunset glow, afterglow, twilight glow, stormy light, eerie light, magical light, ethereal glow, divine light,
heavenly light, hellish glow, fire glow, lava glow, screen glow, monitor glow, flashlight beam""")

QUALITY = P("""masterpiece, best quality, high quality, highest quality, top quality, ultra quality, amazing quality,
great quality, good quality, absurdres, highres, high resolution, ultra high res, ultra hd, uhd, full hd,
hd, 4k, 8k, 16k, 4k uhd, 8k uhd, 8k resolution, 4k wallpaper, 8k wallpaper, extremely detailed cg unity 8k wallpaper,
wallpaper, detailed, highly detailed, ultra detailed, ultra-detailed, extremely detailed, insanely detailed,
intricate details, intricate, fine details, finely detailed, hyperdetailed, hyper detailed, detailed background,
detailed face, detailed eyes, detailed skin, detailed hands, detailed texture, realistic skin texture,
skin pores, detailed fur, detailed clothing, sharp, sharp details, crisp, crisp details, clear, clarity,
professional, professional photo, professional lighting, studio quality, museum quality, gallery quality,
award-winning photo, award winning photography, prize winning, breathtaking, stunning, beautiful, aesthetic,
very aesthetic, perfect composition, perfect lighting, perfect anatomy, perfect face, perfect hands,
beautiful face, beautiful eyes, symmetrical face, amazing, incredible, epic, epic composition,
official art, key visual, illustration, extremely detailed, newest, high detail, raw, raw photo, dslr,
depth, realistic, photorealistic, physically-based rendering, 1080p, 2k, 4k resolution, hq, high-res,
score_9, score_8_up, score_7_up, score_6_up, rating_safe, safe, sfw, source_anime, source_cartoon, source_real""")

NEGATIVE = P("""lowres, low res, low resolution, low quality, worst quality, bad quality, normal quality,
medium quality, poor quality, jpeg artifacts, compression artifacts, artifacts, blurry, blur, blurred,
out of focus, unfocused, noise, noisy, grainy, pixelated, pixelation, dithering, banding, aliasing,
oversaturated, undersaturated, overexposed, underexposed, washed out, faded, dull, flat, low contrast,
high contrast, bad lighting, harsh lighting, bad composition, cropped, cut off, out of frame, off-center,
tilted, distorted, warped, stretched, squashed, deformed, disfigured, malformed, mutated, mutation,
mutations, ugly, gross, disgusting, morbid, mutilated, grotesque, bad anatomy, wrong anatomy,
anatomical nonsense, bad proportions, wrong proportions, gross proportions, unnatural proportions,
bad body, bad hands, bad hand, malformed hands, mutated hands, poorly drawn hands, extra hands,
missing hands, fused hands, bad fingers, extra fingers, missing fingers, fused fingers, too many fingers,
fewer fingers, long fingers, six fingers, extra digit, extra digits, fewer digits, missing digit,
bad feet, extra feet, malformed feet, bad face, poorly drawn face, ugly face, deformed face,
asymmetric face, cloned face, duplicate face, two faces, extra face, extra head, two heads, bad eyes,
deformed eyes, crossed eyes, cross-eyed, lazy eye, asymmetric eyes, extra eyes, missing eyes,
deformed iris, deformed pupils, bad teeth, crooked teeth, bad mouth, extra limbs, extra limb,
missing limbs, missing limb, floating limbs, disconnected limbs, extra arms, missing arms, extra legs,
missing legs, long neck, long body, short legs, bad legs, bad arms, amputee, conjoined, fused body,
duplicate, duplicated, clone, multiple views, split image, tiling, repeating pattern, collage, grid,
text, words, letters, writing, caption, title, subtitles, logo, brand, brand name, watermark, watermarked,
signature, artist signature, username, artist name, copyright, stamp, label, banner, frame, border,
picture frame, black bars, letterbox, vignette, blank, empty, error, glitch, glitched, corrupted,
cgi, 3d, render, 3d render, cartoon, anime, manga, sketch, drawing, painting, illustration, doll,
plastic, plastic skin, waxy skin, shiny skin, airbrushed, smooth skin, overprocessed, oversharpened,
overdone, unrealistic, fake, artificial, amateur, amateurish, beginner, childish, unfinished,
incomplete, messy, sloppy, rough, draft, low detail, lack of detail, simple, boring, bland, generic,
monochrome, grayscale, black and white, sepia, desaturated, muddy colors, color bleeding, chromatic aberration,
lens distortion, fisheye, motion blur, camera shake, noise reduction, over smoothing, bad shadows,
harsh shadows, bad reflection, bad perspective, wrong perspective, distorted perspective, bad framing,
poorly cropped, bad crop, head out of frame, feet out of frame, zoomed in, zoomed out, too dark, too bright,
nsfw, nude, naked, explicit, censored, mosaic censoring, bar censor, blood, gore, violence, scary,
horror, disturbing, creepy, weird, strange, abnormal, bad art, bad artist, bad drawing, poorly drawn,
poorly rendered, badly drawn, inaccurate, cheap, ugly background, cluttered, busy background,
simple background, plain background, bad background, deformed background, worst detail, wrong""")

SCORE_NEG = P("""score_1, score_2, score_3, score_4, score_5, score_4_up, source_pony, source_furry, rating_explicit,
rating_questionable""")

BOORU_COUNT = P("""1girl, 1boy, 2girls, 2boys, 3girls, multiple girls, multiple boys, 1other, solo, solo focus,
no humans, couple, group""")

BOORU_MISC = P("""looking at viewer, looking back, looking to the side, looking away, looking up, looking down,
facing viewer, from side, from above, from below, from behind, upper body, lower body, cowboy shot,
full body, portrait, close-up, sitting, standing, kneeling, lying, on back, on stomach, on side, squatting,
leaning forward, arms up, arms behind back, hand up, hands on hips, hand on own chest, hand on own face,
hands together, holding, holding weapon, holding sword, holding staff, holding book, holding cup,
holding umbrella, holding flower, holding phone, peace sign, v, w, outstretched arm, reaching,
open mouth, closed mouth, closed eyes, smile, grin, blush, light blush, tears, :d, :o, ;), >_<, ^_^,
sweatdrop, heart, spoken heart, musical note, sparkle, star (symbol), outdoors, indoors, day, night,
sky, cloud, blue sky, cloudy sky, sunset, starry sky, moon, tree, flower, grass, water, ocean, beach,
city, building, street, window, curtains, bed, chair, table, bookshelf, plant, petals, cherry blossoms,
leaf, autumn leaves, snow, rain, wind, simple background, white background, grey background,
gradient background, blurry background, depth of field, bokeh, lens flare, light particles, sunlight,
light rays, shadow, dappled sunlight, backlighting, jewelry, necklace, earrings, bracelet, ring, choker,
hat, hair ornament, hairclip, hair ribbon, hair bow, ribbon, bow, frills, lace trim, long sleeves,
short sleeves, sleeveless, detached sleeves, wide sleeves, puffy sleeves, collarbone, bare shoulders,
off shoulder, midriff, skirt, pleated skirt, miniskirt, thighhighs, pantyhose,
zettai ryouiki, boots, shoes, loafers, sandals, barefoot, gloves, white gloves, black gloves,
elbow gloves, fingerless gloves, jacket, open jacket, coat, hoodie, sweater, shirt, collared shirt,
necktie, bowtie, vest, dress, white dress, black dress, sundress, serafuku, school uniform, maid,
maid headdress, apron, kimono, japanese clothes, chinese clothes, armor, cape, cloak, hood, scarf,
headphones, glasses, animal ears, cat ears, fox ears, tail, wings, horns, halo, pointy ears, fang,
skin fang, heterochromia, mole under eye, freckles, dark skin, pale skin, muscular, tall, short,
mature female, mature male, aged down, aged up, chibi, monster girl, kemonomimi mode, animal focus,
scenery, landscape, cityscape, fantasy, science fiction, mecha, robot, weapon, sword, katana, gun, magic,
fire, water, ice, lightning, electricity, aura, glowing, glowing eyes, motion lines, speed lines,
sound effects, english text, signature, watermark, artist name, dated, comic, 4koma, monochrome,
greyscale, sketch, lineart, traditional media, watercolor (medium), official art, game cg, cover,
novel illustration, highres, absurdres, incredibly absurdres, commentary request, translated""")

# Booru writers often join words with underscores: "long_hair".
UNDERSCORE_P = 0.12

MAGIC_FX = P("""magic, magic circle, spell, glowing runes, arcane symbols, energy, aura, glowing aura, sparkles,
particles, floating particles, light particles, glitter, stardust, fire, flames, blue fire, green flames,
smoke, ink splash, paint splash, water splash, splash, explosion, shockwave, lightning bolts, electricity,
plasma, laser beams, portal, magic portal, rift, vortex, whirlpool, tornado, energy shield, force field,
hologram, holographic display, hud, interface, glitch effect, chromatic glitch, data stream, binary code,
circuitry, neon circuitry, floating islands, floating rocks, floating books, levitating objects,
shattered glass, broken mirror, crystals, ice crystals, frost patterns, bubbles, soap bubbles, petals,
feathers, butterflies, fireflies, lanterns, floating lanterns, sky lanterns, stars, shooting star,
constellations, moon phases, celestial map, sacred geometry, mandala, ornaments, filigree, gold leaf,
gold trim, intricate patterns, runes, hieroglyphs, kanji, calligraphy""")

GENRE_SETTINGS = P("""cyberpunk, steampunk, dieselpunk, solarpunk, post-apocalyptic, dystopian, utopian,
fantasy, dark fantasy, high fantasy, low fantasy, urban fantasy, fairy tale, mythology, greek mythology,
norse mythology, japanese folklore, chinese mythology, egyptian mythology, celtic, medieval, renaissance,
victorian, edwardian, 1920s, 1930s, 1940s, 1950s, 1960s, 1970s, 1980s, 1990s, 2000s, wild west, prehistoric,
stone age, bronze age, ancient egypt, ancient rome, ancient greece, feudal japan, edo period, meiji era,
viking age, age of sail, industrial revolution, roaring twenties, cold war, space age, near future,
far future, retro future, alternate history, sci-fi, science fiction, space opera, horror, cosmic horror,
gothic horror, creature design, mystery, thriller, romance, slice of life, comedy, adventure,
epic, heroic fantasy, superhero, noir, western, military, war, historical, biblical, mythic""")

EMOTION_ATMOS = P("""peaceful atmosphere, cozy atmosphere, mysterious atmosphere, eerie atmosphere, dark atmosphere,
dreamy atmosphere, magical atmosphere, romantic atmosphere, melancholic mood, nostalgic mood, joyful mood,
tense atmosphere, ominous atmosphere, hopeful mood, serene mood, lonely mood, epic atmosphere, whimsical mood,
gloomy, moody, atmospheric, immersive, tranquil, calming, uplifting, heartwarming, bittersweet, haunting,
unsettling, otherworldly, liminal space, liminal, surreal atmosphere, vibe, aesthetic, vibes, lofi vibes,
summer vibes, autumn vibes, winter vibes, spring vibes, christmas vibes, halloween vibes""")

WEIGHTS = ["1.05", "1.1", "1.15", "1.2", "1.25", "1.3", "1.35", "1.4", "1.5", "1.6", "0.9", "0.8", "0.7", "0.6", "0.5"]

NUMBERS = W("""two three four five six seven eight nine ten twelve dozen hundreds thousands several many few
a-pair-of a-group-of a-crowd-of a-herd-of a-flock-of a-pack-of a-swarm-of a-school-of a-family-of a-row-of""")

PREPOSITIONS = P("""next to, beside, behind, in front of, on top of, under, above, below, near, surrounded by,
with, holding, carrying, riding, chasing, facing, hugging, fighting, watching, looking at, playing with,
sitting on, standing on, leaning on, hiding behind, climbing, jumping over, flying over, floating above,
walking past, made of, covered in, filled with, decorated with, wrapped in, between, among, across,
along, around, inside, outside, into, out of, through, over, beyond, toward, towards, against, past,
underneath, beneath, on the edge of, at the foot of, in the middle of, on the other side of, far from,
close to, opposite, before, after, without, instead of, like, as big as, alongside, amid, within""")

PRONOUNS = [("she", "her", "is", "has"), ("he", "his", "is", "has"), ("they", "their", "are", "have"),
            ("it", "its", "is", "has")]


# ----------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------

def bare(place: str) -> str:
    """'in a dark forest' -> 'dark forest' (a place as a tag)."""
    words = place.split()
    while len(words) > 1 and words[0] in ("in", "on", "at", "by", "a", "an", "the", "among", "under", "above",
                                          "against", "aboard", "around", "during"):
        words = words[1:]
    return " ".join(words)


class Gen:
    def __init__(self, rng: random.Random):
        self.r = rng

    def pick(self, seq):
        return self.r.choice(seq)

    def maybe(self, p):
        return self.r.random() < p

    def some(self, seq, lo, hi):
        return self.r.sample(seq, min(len(seq), self.r.randint(lo, hi)))

    @staticmethod
    def article(phrase):
        return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase

    # -------- subject phrases ---------------------------------------------------------------

    def person(self):
        base = self.pick(PERSON_BASE if self.maybe(0.45) else PROFESSIONS)
        words = []
        if self.maybe(0.35):
            words.append(self.pick(ADJECTIVES if self.maybe(0.5) else MOODS))
        if self.maybe(0.2):
            words.append(self.pick(NATIONALITIES).replace("-", " "))
        phrase = " ".join(words + [base])
        out = self.article(phrase) if not phrase.endswith(("s", "people", "family", "couple")) else phrase
        extra = []
        if self.maybe(0.45):
            c = self.pick(CLOTHING)
            extra.append(f"wearing {self.article(self.pick(COLORS).replace('-', ' ') + ' ' + c) if self.maybe(0.6) else c}")
        if self.maybe(0.35):
            extra.append(f"with {self.pick(HAIR_COLORS).replace('-', ' ')} {self.pick(HAIR_STYLES)}")
        if self.maybe(0.2):
            extra.append(f"and {self.pick(EYES)}" if extra else f"with {self.pick(EYES)}")
        if self.maybe(0.15):
            extra.append(f"with {self.pick(FACE_BODY)}")
        return " ".join([out] + extra)

    def animal(self):
        base = self.pick(BREEDS if self.maybe(0.3) else ANIMALS)
        words = []
        if self.maybe(0.45):
            words.append(self.pick(MOODS + ADJECTIVES + SIZES))
        if self.maybe(0.2):
            words.append(self.pick(COLORS).replace("-", " "))
        if self.maybe(0.1):
            return f"{self.pick(NUMBERS).replace('-', ' ')} {' '.join(words + [self.plural(base)])}"
        phrase = " ".join(words + [base])
        out = self.article(phrase)
        if self.maybe(0.12):
            out += f" wearing {self.article(self.pick(CLOTHING))}"
        return out

    def thing(self, pool):
        base = self.pick(pool)
        words = []
        if self.maybe(0.5):
            words.append(self.pick(COLORS + MATERIALS + AGES_CONDITION + SIZES + ADJECTIVES).replace("-", " "))
        if self.maybe(0.15):
            words.insert(0, self.pick(SIZES + AGES_CONDITION))
        if self.maybe(0.15):
            return f"{self.pick(NUMBERS).replace('-', ' ')} {' '.join(words + [self.plural(base)])}"
        return self.article(" ".join(words + [base]))

    def food(self):
        base = self.pick(FOOD)
        if self.maybe(0.35) and not base.startswith(("a ", "cup", "bowl", "slice", "loaf", "pint")):
            return f"{self.pick(FOOD_SERVING)} {base}"
        words = []
        if self.maybe(0.4):
            words.append(self.pick(P("""delicious, fresh, homemade, steaming, hot, cold, crispy, juicy, tasty,
                freshly baked, golden brown, glazed, melted, spicy, sweet, savory, colorful, gourmet, artisanal,
                rustic, half-eaten, perfectly plated, mouth-watering, appetizing, frosted, sliced, grilled, fried,
                roasted, organic, vegan""")))
        phrase = " ".join(words + [base])
        return phrase if self.maybe(0.3) else self.article(phrase)

    def vehicle(self):
        if self.maybe(0.15):
            return self.article(self.pick(COLORS).replace("-", " ") + " " + self.pick(CAR_MAKES))
        return self.thing(VEHICLES)

    def building(self):
        if self.maybe(0.15):
            return self.pick(ARCH_STYLES)
        return self.thing(BUILDINGS)

    def creature(self):
        base = self.pick(FANTASY_BEINGS if self.maybe(0.65) else SCIFI_BEINGS)
        words = []
        if self.maybe(0.5):
            words.append(self.pick(ADJECTIVES + MOODS + SIZES + MATERIALS).replace("-", " "))
        out = self.article(" ".join(words + [base]))
        if self.maybe(0.3):
            out += f" {self.pick(['wearing', 'in', 'clad in'])} {self.pick(CLOTHING)}"
        if self.maybe(0.2):
            out += f" with {self.pick(FACE_BODY)}"
        return out

    def scenery(self):
        base = self.pick(NATURE + PLANTS)
        words = []
        if self.maybe(0.55):
            words.append(self.pick(ADJECTIVES + COLORS).replace("-", " "))
        if self.maybe(0.2):
            return " ".join(words + [self.plural(base)])
        return self.article(" ".join(words + [base])) if self.maybe(0.6) else " ".join(words + [base])

    def plural(self, noun):
        """English plural of a noun phrase's last word (phrases with 'of' pluralise their head)."""
        if " of " in noun:
            head, tail = noun.split(" of ", 1)
            return f"{self.plural(head)} of {tail}"
        if noun.endswith(("fish", "sheep", "deer", "moose", "bison", "series", "aircraft")):
            return noun
        if noun.endswith(("man", "woman")):
            return noun[:-2] + "en"
        if noun.endswith("child"):
            return noun + "ren"
        if noun.endswith(("person",)):
            return noun[:-6] + "people"
        if noun.endswith(("leaf", "wolf", "knife", "elf", "shelf", "scarf")):
            return noun[:-2 if noun.endswith("fe") else -1] + "ves"
        if noun.endswith(("s", "sh", "ch", "x")):
            return noun + "es"
        if noun.endswith("y") and noun[-2:-1] not in "aeiou":
            return noun[:-1] + "ies"
        if noun.endswith(("tomato", "potato", "hero", "volcano")):
            return noun + "es"
        return noun + "s"

    def subject(self):
        kind = self.r.choices(["person", "animal", "object", "food", "vehicle", "building", "creature", "scenery"],
                              [24, 20, 14, 9, 7, 8, 11, 7])[0]
        return kind, {"person": self.person, "animal": self.animal, "object": lambda: self.thing(OBJECTS),
                      "food": self.food, "vehicle": self.vehicle, "building": self.building,
                      "creature": self.creature, "scenery": self.scenery}[kind]()

    def action_for(self, kind):
        if kind in ("person", "creature"):
            return self.pick(POSES_ACTIONS)
        if kind == "animal":
            return self.pick(ANIMAL_ACTIONS)
        return self.pick(P("""sitting, standing, resting, placed, floating, lying, half-buried, parked, hanging,
            glowing softly, covered in snow, covered in moss, overgrown with vines, reflected in water,
            surrounded by flowers, in the spotlight, on display, abandoned, forgotten, shining, melting,
            falling apart, being repaired, for sale"""))

    def place(self):
        if self.maybe(0.12):
            return f"in {self.pick(CITIES)}"
        return self.pick(PLACES)

    # -------- decorations -----------------------------------------------------------------

    def weight(self, tag):
        """ComfyUI prompt-weight syntax around one tag."""
        u = self.r.random()
        if u < 0.55:
            return f"({tag}:{self.pick(WEIGHTS)})"
        if u < 0.75:
            return f"({tag})"
        if u < 0.9:
            return f"(({tag}))"
        if u < 0.96:
            return f"((({tag})))"
        return f"[{tag}]"

    def weighted(self, tags, p):
        out = []
        i = 0
        while i < len(tags):
            if self.maybe(p):
                if i + 1 < len(tags) and self.maybe(0.2):      # a group: "(a, b:1.3)"
                    out.append(f"({tags[i]}, {tags[i + 1]}:{self.pick(WEIGHTS)})")
                    i += 2
                    continue
                out.append(self.weight(tags[i]))
            else:
                out.append(tags[i])
            i += 1
        return out

    def booruize(self, tag):
        return tag.replace(" ", "_") if self.maybe(UNDERSCORE_P) else tag

    def style_tags(self, lo, hi):
        pools = [STYLE_TAGS, MEDIA, ART_MOVEMENTS, RENDER_TERMS, PHOTO_GENRES, CAMERAS, LENS_SETTINGS, SHOT_TYPES,
                 LIGHTING, LIGHTING, PALETTES, EMOTION_ATMOS, GENRE_SETTINGS, MAGIC_FX, WEATHER_TAGS]
        return [self.pick(self.pick(pools)) for _ in range(self.r.randint(lo, hi))]

    def quality(self, lo, hi):
        return self.some(QUALITY, lo, hi)

    def detail_tags(self, kind, lo, hi):
        if kind in ("person", "creature"):
            pools = [CLOTHING, HAIR_STYLES, EYES, FACE_BODY, EXPRESSIONS, POSES_ACTIONS]
        elif kind == "animal":
            pools = [ANIMAL_ACTIONS, EXPRESSIONS[:20], P("fluffy fur, soft fur, wet fur, detailed fur, whiskers, paws, "
                                                        "big ears, long tail, feathers, scales, spots, stripes")]
        else:
            pools = [[m.replace("-", " ") for m in MATERIALS], [c.replace("-", " ") for c in COLORS],
                     [a.replace("-", " ") for a in AGES_CONDITION], MAGIC_FX]
        tags = []
        for _ in range(self.r.randint(lo, hi)):
            t = self.pick(self.pick(pools))
            if t in COLORS or t.replace(" ", "-") in COLORS:
                t = f"{t.replace('-', ' ')} {self.pick(CLOTHING) if kind == 'person' else 'color scheme'}"
            tags.append(t)
        return tags

    # -------- prompt shapes ---------------------------------------------------------------

    def caption(self):
        kind, subj = self.subject()
        parts = [self.pick(SHOTS), subj]
        if self.maybe(0.5):
            parts.append(self.action_for(kind))
        if self.maybe(0.2):
            _, other = self.subject()
            parts.append(f"{self.pick(PREPOSITIONS)} {other}")
        if self.maybe(0.75):
            parts.append(self.place())
        if self.maybe(0.35):
            parts.append(self.pick(TIME_WEATHER))
        text = " ".join(parts)
        if self.maybe(0.4):
            text += ", " + ", ".join(self.style_tags(1, 4))
        return text

    def tags(self, long=False):
        kind, subj = self.subject()
        head = self.quality(0, 5) if self.maybe(0.6) else []
        body = [subj]
        if self.maybe(0.5):
            body.append(self.action_for(kind))
        body += self.detail_tags(kind, 0, 6 if long else 4)
        if self.maybe(0.7):
            body.append(bare(self.place()) if self.maybe(0.3) else self.place())
        if self.maybe(0.4):
            body.append(self.pick(TIME_WEATHER + WEATHER_TAGS))
        tail = self.style_tags(2, 10 if long else 6)
        if self.maybe(0.4):
            tail += self.quality(1, 4)
        tags = head + body + tail
        if self.maybe(0.25):            # people shuffle their tags around
            middle = tags[1:]
            self.r.shuffle(middle)
            tags = tags[:1] + middle
        tags = self.weighted(tags, 0.2 if self.maybe(0.5) else 0.05)
        return ", ".join(dict.fromkeys(tags))

    def booru(self, long=False):
        tags = []
        if self.maybe(0.15):
            tags += self.some(QUALITY[-10:-3], 1, 3)          # score_9, score_8_up ...
        if self.maybe(0.6):
            tags += self.some(QUALITY[:30], 1, 4)
        count = self.pick(BOORU_COUNT)
        tags.append(count)
        if count not in ("no humans", "1other") and self.maybe(0.9):
            if self.maybe(0.4):
                tags.append(self.pick(FANTASY_BEINGS + PROFESSIONS))
            tags.append(f"{self.pick(HAIR_COLORS).replace('-', ' ')} hair")
            tags.append(self.pick(HAIR_STYLES))
            tags.append(self.pick(EYES))
            tags += self.some(CLOTHING, 1, 3)
            tags += self.some(EXPRESSIONS, 0, 2)
        else:
            tags += self.some(NATURE + BUILDINGS + ANIMALS, 1, 3)
        tags += self.some(BOORU_MISC, 3, 14 if long else 8)
        if self.maybe(0.4):
            tags.append(bare(self.pick(PLACES)))
        if self.maybe(0.4):
            tags += self.some(STYLE_TAGS + ART_MOVEMENTS + LIGHTING, 1, 3)
        if self.maybe(0.3):
            tags += self.some(QUALITY, 1, 3)
        tags = [self.booruize(t) for t in tags]
        tags = self.weighted(tags, 0.12 if self.maybe(0.5) else 0.03)
        return ", ".join(dict.fromkeys(tags))

    def negative(self, long=False):
        tags = []
        if self.maybe(0.35):
            tags.append(f"({', '.join(self.some(NEGATIVE[:8], 2, 3))}:{self.pick(WEIGHTS[3:10])})")
        tags += self.some(NEGATIVE, 4, 45 if long else 22)
        if self.maybe(0.15):
            tags += self.some(SCORE_NEG, 1, 4)
        tags = self.weighted(tags, 0.15 if self.maybe(0.5) else 0.03)
        return ", ".join(dict.fromkeys(tags))

    def sentence(self):
        kind, subj = self.subject()
        medium = self.pick(MEDIA + PHOTO_GENRES)
        openers = [f"{self.article(self.pick(ADJECTIVES))} {medium} of {subj}",
                   f"{subj[0].upper() + subj[1:]} {self.action_for(kind)} {self.place()}",
                   f"{self.pick(SHOTS)} {subj}",
                   f"this is {self.article(medium)} showing {subj}",
                   f"imagine {subj} {self.place()}",
                   f"{subj}, seen {self.pick(['from above', 'from below', 'from a distance', 'up close', 'through a window', 'through the trees', 'in the reflection of a puddle'])}"]
        sentences = [self.pick(openers)]
        subj_p, poss, be, have = PRONOUNS[{"person": self.r.randint(0, 2), "creature": self.r.randint(0, 3)}.get(kind, 3)]
        for _ in range(self.r.randint(1, 4)):
            kind2, subj2 = self.subject()
            pool2 = self.pick([OBJECTS, ANIMALS, PLANTS, VEHICLES, BUILDINGS, FOOD, PROFESSIONS, PERSON_BASE])
            s = self.pick([
                f"{subj_p} {be} {self.action_for(kind)}",
                f"{subj_p} {have} {self.pick(HAIR_STYLES + EYES + FACE_BODY)}",
                f"{subj_p} {'wear' if be == 'are' else 'wears'} {self.article(self.pick(COLORS).replace('-', ' ') + ' ' + self.pick(CLOTHING))}",
                f"{poss} {self.pick(['face', 'eyes', 'hair', 'hands', 'clothes', 'expression', 'shadow', 'reflection', 'silhouette', 'outline'])} "
                f"{self.pick(['is', 'looks', 'seems', 'appears'])} {self.pick(ADJECTIVES + MOODS)}",
                f"{poss} {self.pick(['face', 'figure', 'body', 'back', 'profile'])} is lit by {self.pick(LIGHTING)}",
                f"there are {self.pick(NUMBERS).replace('-', ' ')} {self.plural(self.pick(pool2))} {self.pick(PREPOSITIONS)} {subj_p if subj_p == 'it' else 'them'}",
                f"{self.plural(self.pick(pool2))} {self.pick(PREPOSITIONS)} {self.article(self.pick(pool2))}",
                f"{self.pick(['behind', 'around', 'above', 'below', 'beside', 'in front of'])} {'them' if be == 'are' else 'it' if subj_p == 'it' else 'her' if subj_p == 'she' else 'him'} "
                f"{self.pick(['is', 'stands', 'lies', 'rises', 'floats'])} {subj2}",
                f"{self.pick(LIGHTING)} falls on {self.pick(['the scene', 'the subject', 'everything', 'the ground', 'the walls', 'the water'])}",
                f"in the background there is {subj2}",
                f"the {self.pick(['sky', 'air', 'room', 'street', 'light', 'water', 'forest', 'city'])} is {self.pick(ADJECTIVES)} and {self.pick(ADJECTIVES)}",
                f"the colors are {self.pick(PALETTES)}",
                f"it is {self.pick(TIME_WEATHER).replace('at ', '').replace('in the ', '').replace('on a ', 'a ')}",
                f"{subj2} {self.action_for(kind2)} nearby",
                f"the mood is {self.pick(EMOTION_ATMOS)}",
                f"shot with {self.article(self.pick(LENS_SETTINGS))}",
                f"the style is {self.pick(STYLE_TAGS + ART_MOVEMENTS)}",
                f"{self.pick(MAGIC_FX + WEATHER_TAGS)} {self.pick(['fills the air', 'surrounds them', 'drifts by', 'everywhere', 'in the foreground', 'all around'])}",
            ])
            sentences.append(s)
        text = ". ".join(s[0].upper() + s[1:] for s in sentences) + "."
        if self.maybe(0.3):
            text += " " + ", ".join(self.style_tags(1, 4) + self.quality(0, 3))
        return text

    def long_prompt(self):
        """Past one chunk: a quality head, a description, many tags (ComfyUI splits it into chunks)."""
        target = self.r.randint(55, 125)              # words; CLIP tokens are ~1.4x (commas, sub-words)
        shapes = [lambda: self.tags(long=True), lambda: self.booru(long=True), self.sentence, self.caption]
        pieces, words = [], 0
        while words < target:
            piece = self.pick(shapes)()
            segments = piece.split(", ")            # cut the last piece at a comma near the target
            keep = []
            for seg in segments:
                if words >= target:
                    break
                keep.append(seg)
                words += len(seg.split())
            pieces.append(", ".join(keep))
        return self.pick([", ", ", ", ", ", ". "]).join(pieces)

    def prompt(self):
        shape = self.r.choices(["caption", "sentence", "tags", "booru", "negative", "long", "long_negative"],
                               [19, 10, 23, 12, 12, 18, 6])[0]
        text = {"caption": self.caption, "sentence": self.sentence, "tags": self.tags, "booru": self.booru,
                "negative": self.negative, "long": self.long_prompt,
                "long_negative": lambda: self.negative(long=True)}[shape]()
        if self.maybe(0.2):
            text = text[0].upper() + text[1:]
        return " ".join(text.split())


def generate(count: int, seed: int = 0) -> list:
    gen = Gen(random.Random(seed))
    seen, lines = set(), []
    while len(lines) < count:
        text = gen.prompt()
        if text not in seen:
            seen.add(text)
            lines.append(text)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "data", "captions.txt"))
    args = parser.parse_args()
    lines = generate(args.count, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} prompts to {args.out}")


if __name__ == "__main__":
    main()
